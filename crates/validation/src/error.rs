//! Calico's validation error (`libcalico-go/lib/errors`: `ErrorValidation`, `ErroredField`)
//! and the two ways the validator words a failure: a struct validator's own reason, and a
//! field tag without one (`extractReason`).

use std::fmt;

/// One failed field (`cerrors.ErroredField`): printed `Name = 'value' (reason)`, the value
/// part only when there is a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErroredField {
    pub name: String,
    pub value: Option<String>,
    pub reason: String,
}

impl ErroredField {
    pub fn new(name: &str, value: Option<String>, reason: impl Into<String>) -> Self {
        ErroredField {
            name: name.to_string(),
            value,
            reason: reason.into(),
        }
    }

    /// A field tag that failed (`validate:"action"` and the like): `extractReason`'s text,
    /// trailing space included, as Calico prints it.
    pub fn tag(field: &str, value: impl Into<String>, tag: &str) -> Self {
        ErroredField::new(
            field,
            Some(value.into()),
            format!("Reason: failed to validate Field: {field} because of Tag: {tag} "),
        )
    }

    /// A CRD schema or CEL rule (`defaultAndValidateCRD` in etcd mode): the JSON path and
    /// the detail, no value.
    pub fn crd(path: &str, detail: impl Into<String>) -> Self {
        ErroredField::new(path, None, detail)
    }
}

impl fmt::Display for ErroredField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{} = '{v}'", self.name)?,
            None => write!(f, "{}", self.name)?,
        }
        if !self.reason.is_empty() {
            write!(f, " ({})", self.reason)?;
        }
        Ok(())
    }
}

/// `cerrors.ErrorValidation`: `error with field X` for one field, a dashed list for several.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError(pub Vec<ErroredField>);

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [] => write!(f, "unknown validation error"),
            [one] => write!(f, "error with field {one}"),
            many => {
                writeln!(f, "error with the following fields:")?;
                for e in many {
                    writeln!(f, "-  {e}")?;
                }
                Ok(())
            }
        }
    }
}

/// `Ok` when nothing failed.
pub fn into_result(fields: Vec<ErroredField>) -> Result<(), ValidationError> {
    if fields.is_empty() {
        Ok(())
    } else {
        Err(ValidationError(fields))
    }
}

/// Go's `%v` of a string slice: `[a b c]`.
pub fn go_list<T: fmt::Display>(items: &[T]) -> String {
    let parts: Vec<String> = items.iter().map(ToString::to_string).collect();
    format!("[{}]", parts.join(" "))
}

/// Go's `%v` of a `map[string]string`: `map[k1:v1 k2:v2]`, keys sorted.
pub fn go_map<'a>(entries: impl Iterator<Item = (&'a String, &'a String)>) -> String {
    let mut parts: Vec<String> = entries.map(|(k, v)| format!("{k}:{v}")).collect();
    parts.sort();
    format!("map[{}]", parts.join(" "))
}
