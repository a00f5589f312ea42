//! `calicoctl` for Calico's etcdv3 datastore.

use anyhow::Context as _;
use calicoctl::config::{self, ConfigError, DEFAULT_CONFIG_PATH};
use calicoctl::error::{CmdError, CmdResult};
use calicoctl::ipam::{check, configure, release, show};
use calicoctl::resources::ops::{self, Action, Ctx, Namespaces};
use calicoctl::resources::print::Format;
use calicoctl::resources::{self, Kind, Object};
use clap::{Args, Parser, Subcommand};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// calicoctl for Calico's etcdv3 datastore.
#[derive(Parser, Debug)]
#[command(name = "calicoctl", version, disable_help_subcommand = true)]
struct Cli {
    /// Log level (accepted for compatibility; nothing is logged).
    #[arg(short = 'l', long = "log-level", default_value = "panic")]
    log_level: String,
    /// Accepted for compatibility: there is no client/cluster version check to override.
    #[arg(long = "allow-version-mismatch", global = true)]
    allow_version_mismatch: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct Datastore {
    /// Path to the file containing connection configuration in YAML or JSON format.
    #[arg(short = 'c', long = "config", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Apply a resource by file or stdin (create it, or replace it if it exists).
    Apply {
        /// Filename to use to apply the resource ("-" for stdin).
        #[arg(short = 'f', long = "filename")]
        filename: String,
        /// Namespace of the resource (namespaced kinds); `default` if not given.
        #[arg(short = 'n', long = "namespace")]
        namespace: Option<String>,
        #[command(flatten)]
        ds: Datastore,
    },
    /// Create a resource by file or stdin.
    Create {
        /// Filename to use to create the resource ("-" for stdin).
        #[arg(short = 'f', long = "filename")]
        filename: String,
        /// Namespace of the resource (namespaced kinds); `default` if not given.
        #[arg(short = 'n', long = "namespace")]
        namespace: Option<String>,
        /// Do not return an error if the resource already exists.
        #[arg(long = "skip-exists")]
        skip_exists: bool,
        #[command(flatten)]
        ds: Datastore,
    },
    /// Replace existing resources by file or stdin.
    Replace {
        /// Filename to use to replace the resource ("-" for stdin).
        #[arg(short = 'f', long = "filename")]
        filename: String,
        /// Namespace of the resource (namespaced kinds); `default` if not given.
        #[arg(short = 'n', long = "namespace")]
        namespace: Option<String>,
        #[command(flatten)]
        ds: Datastore,
    },
    /// Patch a resource in place (a JSON merge of the patch into the stored object).
    Patch {
        /// The kind (ippool, node, ipamconfig, bgpconfig, bgppeer, networkpolicy,
        /// globalnetworkpolicy, tier, networkset, globalnetworkset, profile,
        /// felixconfiguration and their aliases).
        kind: String,
        /// The name of the resource.
        name: String,
        /// The patch, JSON: `{"spec":{"bgp":{"routeReflectorClusterID":"224.0.0.1"}}}`.
        #[arg(short = 'p', long = "patch")]
        patch: String,
        /// Accepted as calicoctl accepts it (strategic, json, merge): every patch is merged.
        #[arg(short = 't', long = "type", default_value = "strategic")]
        patch_type: String,
        /// Namespace of the resource (namespaced kinds); `default` if not given.
        #[arg(short = 'n', long = "namespace")]
        namespace: Option<String>,
        #[command(flatten)]
        ds: Datastore,
    },
    /// Delete a resource identified by file, stdin or kind and name.
    Delete {
        /// The kind (ippool, node, ipamconfig, bgpconfig, bgppeer, networkpolicy,
        /// globalnetworkpolicy, tier, networkset, globalnetworkset, profile,
        /// felixconfiguration and their aliases; workloadendpoint is read-only).
        kind: Option<String>,
        /// The name of the resource.
        name: Option<String>,
        /// Filename to use to delete the resource ("-" for stdin).
        #[arg(short = 'f', long = "filename", conflicts_with_all = ["kind", "name"])]
        filename: Option<String>,
        /// Do not return an error if the resource does not exist.
        #[arg(long = "skip-not-exists")]
        skip_not_exists: bool,
        /// Namespace of the resource (namespaced kinds); `default` if not given.
        #[arg(short = 'n', long = "namespace")]
        namespace: Option<String>,
        #[command(flatten)]
        ds: Datastore,
    },
    /// Get resources: a list of the kind, or the named ones.
    Get {
        /// The kind (ippool, node, ipamconfig, bgpconfig, bgppeer, workloadendpoint,
        /// networkpolicy, globalnetworkpolicy, tier, networkset, globalnetworkset, profile,
        /// felixconfiguration and their aliases).
        kind: String,
        /// Names; none lists every resource of the kind.
        names: Vec<String>,
        /// Output format: ps, wide, yaml or json.
        #[arg(short = 'o', long = "output", default_value = "ps")]
        output: String,
        /// Namespace of the resource (namespaced kinds); `default` if not given.
        #[arg(short = 'n', long = "namespace")]
        namespace: Option<String>,
        /// List the requested objects across all namespaces.
        #[arg(short = 'A', short_alias = 'a', long = "all-namespaces")]
        all_namespaces: bool,
        #[command(flatten)]
        ds: Datastore,
    },
    /// IP address management.
    Ipam {
        #[command(subcommand)]
        command: IpamCommand,
    },
    /// Calico node management.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
}

#[derive(Subcommand, Debug)]
enum NodeCommand {
    /// Check the status of the Calico node instance: its BGP peering states.
    Status,
}

#[derive(Subcommand, Debug)]
enum IpamCommand {
    /// Show IP usage per pool (and block), or who holds an address.
    Show {
        /// Report whether this specific IP address is in use.
        #[arg(long = "ip", group = "what")]
        ip: Option<String>,
        /// Show detailed information for IP blocks as well as pools.
        #[arg(long = "show-blocks", group = "what")]
        show_blocks: bool,
        /// Show detailed information for "borrowed" IP addresses.
        #[arg(long = "show-borrowed", group = "what")]
        show_borrowed: bool,
        /// Show current Calico IPAM configuration.
        #[arg(long = "show-configuration", group = "what")]
        show_configuration: bool,
        #[command(flatten)]
        ds: Datastore,
    },
    /// Modify the IPAM configuration.
    Configure {
        /// Set StrictAffinity to true/false (no borrowing when true).
        #[arg(long = "strictaffinity")]
        strict_affinity: Option<String>,
        /// Set the maximum number of blocks that can be affine to a host.
        #[arg(long = "max-blocks-per-host")]
        max_blocks_per_host: Option<String>,
        /// Enabled|Disabled: whether KubeVirt VMs keep their IP addresses.
        #[arg(long = "kubevirt-ip-persistence")]
        kubevirt_ip_persistence: Option<String>,
        #[command(flatten)]
        ds: Datastore,
    },
    /// Release an IP address.
    Release {
        /// IP address to release.
        #[arg(long = "ip")]
        ip: String,
        #[command(flatten)]
        ds: Datastore,
    },
    /// Check the IPAM data for inconsistencies (etcd only).
    Check {
        /// Path to output report file.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        /// Print all IPs that are checked.
        #[arg(long = "show-all-ips")]
        show_all_ips: bool,
        /// Print all IPs that are leaked or not allocated properly.
        #[arg(long = "show-problem-ips")]
        show_problem_ips: bool,
        /// Accepted for compatibility; Kubernetes is not consulted.
        #[arg(long = "kubeconfig")]
        kubeconfig: Option<String>,
        #[command(flatten)]
        ds: Datastore,
    },
}

/// The etcd connection a command's `--config` describes.
fn connect(ds: &Datastore) -> CmdResult<calico_datastore::Etcd> {
    let spec = config::load(&ds.config, |k| std::env::var(k).ok()).map_err(|e| match e {
        ConfigError::Unreadable(_) => CmdError::Stdout(e.to_string()),
        ConfigError::Invalid(m) => CmdError::Failed(m),
    })?;
    let cfg = spec
        .etcd_config()
        .map_err(|e| CmdError::Failed(e.to_string()))?;
    calico_datastore::Etcd::connect(&cfg)
        .map_err(|e| CmdError::Failed(format!("Failed to create Calico API client: {e}")))
}

/// The documents of `-f <file>` (`-` is stdin).
fn read_objects(filename: &str) -> CmdResult<Vec<Object>> {
    // Bounded, as every file a setting names (calico-fsbound): `/dev/zero` or a FIFO given
    // as `-f` must not read without end or block.
    let limit = calico_fsbound::DOCUMENT_LIMIT;
    let text = if filename == "-" {
        // Bytes first: a cut at the limit may split a character, and the size is the error.
        let mut bytes = Vec::new();
        std::io::stdin()
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| CmdError::failed(format!("failed to execute command: read stdin: {e}")))?;
        if bytes.len() as u64 > limit {
            return Err(CmdError::failed(format!(
                "failed to execute command: stdin holds more than {limit} bytes"
            )));
        }
        String::from_utf8(bytes).map_err(|_| {
            CmdError::failed("failed to execute command: stdin is not UTF-8 text".to_string())
        })?
    } else {
        calico_fsbound::read_config_string(Path::new(filename), limit, "-f").map_err(|e| {
            if e.is_missing() {
                // Go's words for it.
                CmdError::failed(format!(
                    "failed to execute command: open {filename}: no such file or directory"
                ))
            } else {
                CmdError::failed(format!("failed to execute command: {e}"))
            }
        })?
    };
    let objects = resources::parse_documents(&text)
        .map_err(|e| CmdError::failed(format!("failed to execute command: {e}")))?;
    if objects.is_empty() {
        return Err(CmdError::failed(format!(
            "no resources specified in file {filename}"
        )));
    }
    Ok(objects)
}

/// The documents of `-f`, with `-n` applied as calicoctl's `handleNamespace` does; a
/// mismatch fails the command before anything is written.
fn documents(filename: &str, namespace: Option<&str>, verb: &str) -> CmdResult<Vec<Object>> {
    let mut objects = read_objects(filename)?;
    let errors = ops::handle_namespaces(&mut objects, namespace);
    if errors.is_empty() {
        return Ok(objects);
    }
    let kinds: std::collections::BTreeSet<Kind> = objects.iter().map(Object::kind).collect();
    let kind = (kinds.len() == 1).then(|| objects[0].kind());
    if verb == "delete" {
        // delete.go reports each resource on its own line.
        let lines: Vec<String> = errors
            .iter()
            .map(|e| match kind {
                Some(k) => format!("Failed to delete '{}' resource: {e}", k.name()),
                None => format!("Failed to delete resource: {e}"),
            })
            .collect();
        return Err(CmdError::Failed(lines.join("\n")));
    }
    Err(CmdError::Failed(ops::all_failed(
        verb,
        kind,
        objects.len(),
        &errors,
    )))
}

/// The object `delete <kind> <name>` names (in `namespace` for a namespaced kind).
fn named_object(kind: Kind, name: &str, namespace: Option<&str>) -> CmdResult<Object> {
    let mut o = bare_object(kind, name)?;
    let errors = ops::handle_namespaces(std::slice::from_mut(&mut o), namespace);
    if let Some(e) = errors.into_iter().next() {
        return Err(CmdError::Failed(format!(
            "Failed to delete '{}' resource: {e}",
            kind.name()
        )));
    }
    Ok(o)
}

fn bare_object(kind: Kind, name: &str) -> CmdResult<Object> {
    use calico_datastore::model::{IpPool, IpPoolSpec, Resource};
    Ok(match kind {
        Kind::IpPool => Object::IpPool(IpPool::new(kind.name(), name, IpPoolSpec::for_cidr(""))),
        Kind::Node => Object::Node(Resource::new(kind.name(), name, Default::default())),
        Kind::IpamConfiguration => {
            Object::IpamConfiguration(Resource::new(kind.name(), name, Default::default()))
        }
        Kind::BgpConfiguration => Object::BgpConfiguration(Box::new(Resource::new(
            kind.name(),
            name,
            Default::default(),
        ))),
        Kind::BgpPeer => Object::BgpPeer(Box::new(Resource::new(
            kind.name(),
            name,
            Default::default(),
        ))),
        Kind::NetworkPolicy => Object::NetworkPolicy(Box::new(Resource::new(
            kind.name(),
            name,
            Default::default(),
        ))),
        Kind::GlobalNetworkPolicy => Object::GlobalNetworkPolicy(Box::new(Resource::new(
            kind.name(),
            name,
            Default::default(),
        ))),
        Kind::Tier => Object::Tier(Box::new(Resource::new(
            kind.name(),
            name,
            Default::default(),
        ))),
        Kind::NetworkSet => Object::NetworkSet(Box::new(Resource::new(
            kind.name(),
            name,
            Default::default(),
        ))),
        Kind::GlobalNetworkSet => Object::GlobalNetworkSet(Box::new(Resource::new(
            kind.name(),
            name,
            Default::default(),
        ))),
        Kind::Profile => Object::Profile(Box::new(Resource::new(
            kind.name(),
            name,
            Default::default(),
        ))),
        Kind::FelixConfiguration => Object::FelixConfiguration(Box::new(Resource::new(
            kind.name(),
            name,
            Default::default(),
        ))),
        Kind::WorkloadEndpoint => {
            return Err(CmdError::failed(kind.read_only_error()));
        }
    })
}

fn run(cli: Cli, out: &mut dyn std::io::Write) -> CmdResult {
    match cli.command {
        Command::Apply {
            filename,
            namespace,
            ds,
        } => {
            let objects = documents(&filename, namespace.as_deref(), "apply")?;
            let store = connect(&ds)?;
            ops::apply(&Ctx::new(&store), &objects, Action::Apply, false, out)
        }
        Command::Patch {
            kind,
            name,
            patch,
            patch_type: _,
            namespace,
            ds,
        } => {
            let kind = Kind::from_alias(&kind).ok_or_else(|| {
                CmdError::failed(format!("resource type '{kind}' is not supported"))
            })?;
            let store = connect(&ds)?;
            ops::patch(
                &Ctx::new(&store),
                kind,
                namespace.as_deref(),
                &name,
                &patch,
                out,
            )
        }
        Command::Replace {
            filename,
            namespace,
            ds,
        } => {
            let objects = documents(&filename, namespace.as_deref(), "replace")?;
            let store = connect(&ds)?;
            ops::apply(&Ctx::new(&store), &objects, Action::Replace, false, out)
        }
        Command::Create {
            filename,
            skip_exists,
            namespace,
            ds,
        } => {
            let objects = documents(&filename, namespace.as_deref(), "create")?;
            let store = connect(&ds)?;
            ops::apply(
                &Ctx::new(&store),
                &objects,
                Action::Create,
                skip_exists,
                out,
            )
        }
        Command::Delete {
            kind,
            name,
            filename,
            skip_not_exists,
            namespace,
            ds,
        } => {
            let (objects, single) = match (filename, kind, name) {
                (Some(f), _, _) => (documents(&f, namespace.as_deref(), "delete")?, None),
                (None, Some(k), Some(n)) => {
                    let kind = Kind::from_alias(&k).ok_or_else(|| {
                        CmdError::failed(format!("resource type '{k}' is not supported"))
                    })?;
                    if n.is_empty() {
                        return Err(CmdError::failed("resource name may not be empty"));
                    }
                    (
                        vec![named_object(kind, &n, namespace.as_deref())?],
                        Some(kind),
                    )
                }
                _ => {
                    return Err(CmdError::failed(
                        "invalid option: delete needs <KIND> <NAME> or --filename=<FILENAME>",
                    ));
                }
            };
            let store = connect(&ds)?;
            ops::delete(&Ctx::new(&store), &objects, single, skip_not_exists, out)
        }
        Command::Get {
            kind,
            names,
            output,
            namespace,
            all_namespaces,
            ds,
        } => {
            let k = Kind::from_alias(&kind).ok_or_else(|| {
                CmdError::failed(format!(
                    "failed to get resources: resource type '{kind}' is not supported"
                ))
            })?;
            let format = Format::parse(&output).ok_or_else(|| {
                CmdError::failed(format!(
                    "unrecognized output format '{output}': use ps, wide, yaml or json"
                ))
            })?;
            if names.iter().any(String::is_empty) {
                return Err(CmdError::failed("resource name may not be empty"));
            }
            let namespaces = Namespaces {
                namespace,
                all: all_namespaces,
            };
            let store = connect(&ds)?;
            ops::get(&Ctx::new(&store), k, &names, &namespaces, format, out)
        }
        Command::Node {
            command: NodeCommand::Status,
        } => calicoctl::node_status::run(out),
        Command::Ipam { command } => match command {
            IpamCommand::Show {
                ip,
                show_blocks,
                show_borrowed,
                show_configuration,
                ds,
            } => {
                if let Some(ip) = &ip {
                    show::parse_ip(ip)?;
                }
                let store = connect(&ds)?;
                match ip {
                    Some(ip) => show::show_ip(&store, &ip, out),
                    None if show_borrowed => show::show_borrowed(&store, out),
                    None if show_configuration => show::show_configuration(&store, out),
                    None => show::utilization(&store, show_blocks, out),
                }
            }
            IpamCommand::Configure {
                strict_affinity,
                max_blocks_per_host,
                kubevirt_ip_persistence,
                ds,
            } => {
                let opts = configure::Options {
                    strict_affinity,
                    max_blocks_per_host,
                    kubevirt_ip_persistence,
                };
                opts.parse()?;
                let store = connect(&ds)?;
                configure::configure(&store, &opts, out)
            }
            IpamCommand::Release { ip, ds } => {
                show::parse_ip(&ip)?;
                let store = connect(&ds)?;
                release::release_ip(&store, &ip, out)
            }
            IpamCommand::Check {
                output,
                show_all_ips,
                show_problem_ips,
                kubeconfig: _,
                ds,
            } => {
                let store = connect(&ds)?;
                let opts = check::CheckOptions {
                    show_all_ips,
                    show_problem_ips,
                };
                check::check(&store, opts, output.as_deref(), out)
            }
        },
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let _ = (&cli.log_level, cli.allow_version_mismatch);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let result = run(cli, &mut out);
    let flushed = out.flush().context("cannot write to stdout");
    drop(out);
    match (result, flushed) {
        (Ok(()), Ok(())) => ExitCode::SUCCESS,
        (Ok(()), Err(e)) => {
            eprintln!("{e:#}");
            ExitCode::FAILURE
        }
        (Err(CmdError::Stdout(m)), _) => {
            println!("{m}");
            ExitCode::FAILURE
        }
        (Err(CmdError::Failed(m)), _) => {
            eprintln!("{m}");
            ExitCode::FAILURE
        }
    }
}
