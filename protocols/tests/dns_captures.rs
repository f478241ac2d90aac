//! DNS parser on conversations captured from dnsmasq + dig (tests/fixtures/dns/capture.sh).
mod replay;

use sonde_protocols::{Field, Kind, Transport};

fn string(f: &Field) -> &str {
    match f {
        Field::String(s) => s,
        other => panic!("not a string: {other:?}"),
    }
}

#[test]
fn udp_queries_from_dig_are_stitched_by_transaction_id() {
    let r = replay::check_case(Kind::Dns, Transport::Udp, "dns", "udp");
    assert_eq!(r.records.len(), 6);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.records.iter().all(|rec| rec.latency_ns.is_some()));
    let cname = &r.records[1];
    assert_eq!(string(&cname.fields[4]), "www.sonde.test");
    let answers = string(&cname.fields[3]);
    assert!(
        answers.contains(r#""type":"CNAME""#) && answers.contains(r#""data":"web.sonde.test""#),
        "{answers}"
    );
    assert!(answers.contains(r#""data":"10.0.0.7""#), "{answers}");
    assert!(string(&r.records[2].fields[3]).contains("fd00::7"));
    assert_eq!(string(&r.records[3].fields[6]), "NXDOMAIN");
}

#[test]
fn tcp_queries_on_one_connection_survive_any_chunking() {
    let r = replay::check_case(Kind::Dns, Transport::Tcp, "dns", "tcp");
    assert_eq!(r.records.len(), 2);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(string(&r.records[1].fields[5]), "AAAA");
}

#[test]
fn queries_of_types_the_decoder_does_not_know_keep_their_name_and_answers() {
    let r = replay::check_case(Kind::Dns, Transport::Udp, "dns", "udp_unknown_type");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let names: Vec<(&str, &str)> = r
        .records
        .iter()
        .map(|rec| (string(&rec.fields[4]), string(&rec.fields[5])))
        .collect();
    assert_eq!(
        names,
        [
            ("web.sonde.test", "SSHFP"),
            ("_443._tcp.web.sonde.test", "TLSA"),
            ("web.sonde.test", "OTHER"),
        ]
    );
    // dnsmasq's SSHFP record: listed with its name and type, its data not decoded.
    assert_eq!(
        string(&r.records[0].fields[3]),
        r#"{"answers":[{"name":"web.sonde.test","type":"SSHFP","data":null}]}"#
    );
}
