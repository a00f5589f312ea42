//! Names, JSON, writes and waits on a temporary directory.

#![allow(clippy::unwrap_used)]

use super::*;
use std::sync::mpsc;

fn key() -> EndpointKey {
    EndpointKey::new("k8s", "default/testpod1", "eth0")
}

/// Mirrors names/workloadendpointstatus_test.go "WorkloadEndpointKey to endpoint-status
/// filename" (its three entries), plus what url.PathEscape keeps and escapes.
#[test]
fn file_names_are_calicos() {
    assert_eq!(key().file_name(), "k8s default%2Ftestpod1 eth0");
    assert_eq!(
        file_name("k8/s", "defaul/t/testp/od1", "eth/0"),
        "k8%2Fs defaul%2Ft%2Ftestp%2Fod1 eth%2F0"
    );
    assert_eq!(
        file_name("k8s", "default/t est pod1", "eth0"),
        "k8s default%2Ft%20est%20pod1 eth0"
    );
    // url.PathEscape keeps -_.~$&+:=@ and escapes /;,? and the rest, bytes of UTF-8 each.
    assert_eq!(
        file_name("a-_.~$&+:=@", "n/;,?#%é", "x"),
        "a-_.~$&+:=@ n%2F%3B%2C%3F%23%25%C3%A9 x"
    );
    for k in [
        key(),
        EndpointKey::new("k8s", "default/t est pod1", "eth0"),
        EndpointKey::new("a-_.~$&+:=@", "n/;,?#%é", "x"),
    ] {
        assert_eq!(EndpointKey::from_file_name(&k.file_name()), Some(k));
    }
    assert_eq!(EndpointKey::from_file_name("only two"), None);
    assert_eq!(EndpointKey::from_file_name("a b c d"), None);
    assert_eq!(EndpointKey::from_file_name("a b%2 c"), None);
    assert_eq!(EndpointKey::from_file_name("a b%zz c"), None);
}

/// Mirrors status_file_writer_test.go and protoconv's WorkloadEndpointToWorkloadEndpointStatus:
/// Calico's field names and order, empty fields left out.
#[test]
fn json_is_calicos() {
    let s = EndpointStatus {
        iface_name: "cali12345".into(),
        mac: "ee:ee:ee:ee:ee:ee".into(),
        ipv4_nets: vec!["10.0.240.2/24".into()],
        ipv6_nets: vec!["2001:db8:2::2/128".into()],
        bgp_peer_name: String::new(),
    };
    assert_eq!(
        serde_json::to_string(&s).unwrap(),
        r#"{"ifaceName":"cali12345","mac":"ee:ee:ee:ee:ee:ee","ipv4Nets":["10.0.240.2/24"],"ipv6Nets":["2001:db8:2::2/128"]}"#
    );
    assert_eq!(
        serde_json::to_string(&EndpointStatus::default()).unwrap(),
        "{}"
    );
    let peer: EndpointStatus =
        serde_json::from_str(r#"{"ifaceName":"cali1","bgpPeerName":"peer-a","future":1}"#).unwrap();
    assert_eq!(peer.bgp_peer_name, "peer-a");
}

#[test]
fn write_read_list_remove() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = status_dir(tmp.path());
    assert_eq!(dir, tmp.path().join("endpoint-status"));
    assert!(
        list(&dir).unwrap().is_empty(),
        "a missing directory lists as empty"
    );
    ensure_dir(&dir).unwrap();
    ensure_dir(&dir).unwrap();

    let status = EndpointStatus {
        iface_name: "cali1".into(),
        ipv4_nets: vec!["10.244.0.5/32".into()],
        ..Default::default()
    };
    assert_eq!(read(&dir, &key()).unwrap(), None);
    write(&dir, &key(), &status).unwrap();
    let path = dir.join("k8s default%2Ftestpod1 eth0");
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        r#"{"ifaceName":"cali1","ipv4Nets":["10.244.0.5/32"]}"#
    );
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert_eq!(read(&dir, &key()).unwrap(), Some(status.clone()));

    // Rewriting replaces; nothing but the status file is left in the directory.
    let updated = EndpointStatus {
        mac: "ee:ee:ee:ee:ee:ee".into(),
        ..status
    };
    write(&dir, &key(), &updated).unwrap();
    fs::write(dir.join(".epstatus-leftover"), "x").unwrap();
    fs::create_dir(dir.join("subdir")).unwrap();
    fs::write(dir.join("junk"), "not json").unwrap();
    let listed = list(&dir).unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[0].file_name, "junk");
    assert_eq!(listed[0].key, None);
    assert!(matches!(listed[0].status, Err(EpStatusError::Json { .. })));
    assert_eq!(listed[1].key, Some(key()));
    assert_eq!(listed[1].status.as_ref().unwrap(), &updated);

    assert!(remove(&dir, &key()).unwrap());
    assert!(!remove(&dir, &key()).unwrap(), "removing twice is fine");
    assert_eq!(read(&dir, &key()).unwrap(), None);
}

#[test]
fn write_into_a_missing_directory_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let e = write(&tmp.path().join("nope"), &key(), &EndpointStatus::default()).unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
}

#[test]
fn wait_returns_at_once_for_a_file_already_there() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), &key(), &EndpointStatus::default()).unwrap();
    let t = Instant::now();
    wait_for(tmp.path(), &key(), Duration::from_secs(5)).unwrap();
    assert!(t.elapsed() < Duration::from_secs(1));
    // A zero timeout still looks once.
    wait_for(tmp.path(), &key(), Duration::ZERO).unwrap();
}

#[test]
fn wait_sees_a_file_written_later_through_the_watch() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (tx, rx) = mpsc::channel();
    let writer = std::thread::spawn(move || {
        // The stand-in for the agent writes once the waiter has been told to start.
        rx.recv().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        write(&dir, &key(), &EndpointStatus::default()).unwrap();
        // Another endpoint's file does not end the wait of this one.
        write(
            &dir,
            &EndpointKey::new("k8s", "default/other", "eth0"),
            &EndpointStatus::default(),
        )
        .unwrap();
    });
    let t = Instant::now();
    tx.send(()).unwrap();
    wait_for(tmp.path(), &key(), Duration::from_secs(20)).unwrap();
    let took = t.elapsed();
    writer.join().unwrap();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    // Seen by inotify, not at a poll tick long after.
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn wait_times_out_with_calicos_message() {
    let tmp = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let e = wait_for(tmp.path(), &key(), Duration::from_millis(400)).unwrap_err();
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(e.waited >= Duration::from_millis(400));
    assert_eq!(
        e.to_string(),
        format!(
            "timed out waiting for endpoint status file '{}': file not found",
            tmp.path().join("k8s default%2Ftestpod1 eth0").display()
        )
    );
    // Zero: one look, no wait.
    let t = Instant::now();
    assert!(wait_for(tmp.path(), &key(), Duration::ZERO).is_err());
    assert!(t.elapsed() < Duration::from_millis(50));
}

#[test]
fn wait_copes_with_a_directory_made_later() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("endpoint-status");
    let made = dir.clone();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        ensure_dir(&made).unwrap();
        write(&made, &key(), &EndpointStatus::default()).unwrap();
    });
    wait_for(&dir, &key(), Duration::from_secs(20)).unwrap();
    writer.join().unwrap();
}
