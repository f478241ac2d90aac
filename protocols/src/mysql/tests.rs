//! Edge cases as byte constants; real conversations are in tests/mysql_captures.rs.
use super::*;
use crate::captured::feed_reads;
use crate::{Field, Red};

fn pkt(seq: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut p = len.to_le_bytes()[..3].to_vec();
    p.push(seq);
    p.extend_from_slice(payload);
    p
}

const OK: &[u8] = b"\x00\x01\x00\x02\x00\x00\x00";
/// A prepare answer's definition of a parameter (`?`, VAR_STRING).
const PARAM: &[u8] =
    b"\x03def\x00\x00\x00\x01?\x00\x0c\x3f\x00\x00\x00\x00\x00\xfd\x80\x00\x00\x00\x00";

fn client() -> Parser {
    Parser::new(Role::Client, &ParseConfig::default())
}

fn run(p: &mut Parser, steps: &[(Direction, u64, Vec<u8>)]) -> Vec<Record> {
    let mut out = Vec::new();
    for (dir, ts, data) in steps {
        p.feed(*dir, *ts, data, &mut out).unwrap();
    }
    out
}

#[test]
fn detect_knows_the_server_greeting_anywhere_and_commands_on_3306() {
    let mut greeting = b"\x0a10.11.19-MariaDB\x00".to_vec();
    greeting.resize(60, 0);
    assert!(detect(Direction::Ingress, &pkt(0, &greeting), 40000));
    let query = pkt(0, b"\x03SELECT 1");
    assert!(detect(Direction::Egress, &query, 3306));
    assert!(!detect(Direction::Egress, &query, 40000));
    assert!(!detect(Direction::Egress, b"GET / HTTP/1.1\r\n", 3306));
}

#[test]
fn an_ok_answers_a_query() {
    let out = run(
        &mut client(),
        &[
            (Direction::Egress, 5, pkt(0, b"\x03DELETE FROM t")),
            (Direction::Ingress, 9, pkt(1, OK)),
        ],
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].latency_ns, Some(4));
    assert_eq!(out[0].fields[3], Field::String("OK".into()));
    assert_eq!(out[0].fields[4], Field::String("affected rows: 1".into()));
    assert_eq!(
        out[0].red,
        Red::Db {
            system: "mysql",
            operation: "DELETE",
            error: ""
        }
    );
}

#[test]
fn a_result_set_without_eof_packets_ends_at_the_ok() {
    // CLIENT_DEPRECATE_EOF style: count, one column definition, rows, OK with 0xFE header.
    let out = run(
        &mut client(),
        &[
            (Direction::Egress, 1, pkt(0, b"\x03SELECT a FROM t")),
            (Direction::Ingress, 2, [pkt(1, b"\x01"), pkt(2, b"\x03def\x00\x00\x00\x01a\x00\x0c\x3f\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00\x00")].concat()),
            (Direction::Ingress, 3, [pkt(3, b"\x011"), pkt(4, b"\x012"), pkt(5, b"\xfe\x00\x00\x02\x00\x00\x00")].concat()),
        ],
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].fields[5], Field::Int64(2));
    assert_eq!(out[0].fields[4], Field::String("Resultset rows = 2".into()));
}

#[test]
fn a_result_set_whose_definitions_were_left_out_counts_every_row_even_with_the_handshake_unseen() {
    // MariaDB's metadata cache: a 0 after the column count says the definitions are not sent.
    // The agent came after the handshake, so only that byte tells.
    let out = run(
        &mut client(),
        &[
            (
                Direction::Egress,
                1,
                pkt(0, b"\x17\x02\x00\x00\x00\x00\x01\x00\x00\x00"),
            ),
            (
                Direction::Ingress,
                2,
                [
                    pkt(1, b"\x02\x00"),
                    pkt(2, b"\x00\x00\x01\x00\x00\x00\x01a"),
                ]
                .concat(),
            ),
            (
                Direction::Ingress,
                3,
                [
                    pkt(3, b"\x00\x00\x02\x00\x00\x00\x01b"),
                    pkt(4, b"\xfe\x00\x00\x02\x00\x00\x00"),
                ]
                .concat(),
            ),
            (Direction::Egress, 4, pkt(0, b"\x03DELETE FROM t")),
            (Direction::Ingress, 5, pkt(1, OK)),
        ],
    );
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].fields[4], Field::String("Resultset rows = 2".into()));
    assert_eq!(out[0].fields[5], Field::Int64(2));
    assert_eq!(out[1].fields[4], Field::String("affected rows: 1".into()));
}

#[test]
fn an_err_packet_carries_code_state_and_message() {
    let out = run(
        &mut client(),
        &[
            (Direction::Egress, 1, pkt(0, b"\x03SELEC")),
            (
                Direction::Ingress,
                2,
                pkt(1, b"\xff\x28\x04#42000You have an error"),
            ),
        ],
    );
    assert_eq!(out[0].fields[3], Field::String("ERR".into()));
    assert_eq!(
        out[0].fields[4],
        Field::String("1064 (42000): You have an error".into())
    );
}

#[test]
fn quit_is_recorded_without_a_response() {
    let out = run(&mut client(), &[(Direction::Egress, 1, pkt(0, b"\x01"))]);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].fields[0], Field::String("COM_QUIT".into()));
    assert_eq!(out[0].latency_ns, None);
}

#[test]
fn a_prepared_statement_is_executed_under_its_text() {
    let mut p = client();
    let out = run(
        &mut p,
        &[
            (Direction::Egress, 1, pkt(0, b"\x16SELECT ?")),
            // Prepare OK: id 9, 0 columns, 1 param; one parameter definition, no EOF (handshake unseen).
            (Direction::Ingress, 2, [pkt(1, b"\x00\x09\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00"), pkt(2, PARAM)].concat()),
            // Execute id 9, no cursor, 1 iteration, null bitmap 0, new types: LONGLONG signed, value -5.
            (Direction::Egress, 3, pkt(0, b"\x17\x09\x00\x00\x00\x00\x01\x00\x00\x00\x00\x01\x08\x00\xfb\xff\xff\xff\xff\xff\xff\xff")),
            (Direction::Ingress, 4, pkt(1, OK)),
        ],
    );
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].fields[0], Field::String("COM_STMT_EXECUTE".into()));
    assert_eq!(out[1].fields[1], Field::String("SELECT ?".into()));
    assert_eq!(out[1].fields[2], Field::String("-5".into()));
}

#[test]
fn a_value_bound_to_a_password_column_is_redacted_when_executed() {
    let mut p = client();
    let out = run(
        &mut p,
        &[
            (Direction::Egress, 1, pkt(0, b"\x16UPDATE users SET `password` = ? WHERE id = ?")),
            // Prepare OK: id 4, 0 columns, 2 params, their definitions (no EOF: handshake unseen).
            (Direction::Ingress, 2, [pkt(1, b"\x00\x04\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00"), pkt(2, PARAM), pkt(3, PARAM)].concat()),
            // Execute id 4, 1 iteration, null bitmap 0, new types: VAR_STRING, LONGLONG; 'hunter2', 7.
            (Direction::Egress, 3, pkt(0, b"\x17\x04\x00\x00\x00\x00\x01\x00\x00\x00\x00\x01\xfd\x00\x08\x00\x07hunter2\x07\x00\x00\x00\x00\x00\x00\x00")),
            (Direction::Ingress, 4, pkt(1, OK)),
        ],
    );
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].fields[2], Field::String("<redacted>, 7".into()));
}

#[test]
fn the_info_of_an_ok_is_read_without_its_length_prefix_whatever_the_client_asked() {
    // PyMySQL's handshake response: CLIENT_PROTOCOL_41 and others, no CLIENT_SESSION_TRACK.
    let mut response = 0x000f_a28fu32.to_le_bytes().to_vec();
    response.resize(40, 0);
    let info = b"Records: 2  Duplicates: 0  Warnings: 0";
    let mut ok = b"\x00\x02\x00\x02\x00\x00\x00".to_vec();
    ok.push(info.len() as u8);
    ok.extend_from_slice(info);
    let out = run(
        &mut client(),
        &[
            (Direction::Egress, 1, pkt(1, &response)),
            (
                Direction::Egress,
                2,
                pkt(0, b"\x03INSERT INTO t VALUES (1),(2)"),
            ),
            (Direction::Ingress, 3, pkt(1, &ok)),
        ],
    );
    // The login first, its answer not in this capture.
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].fields[0], Field::String("COM_CONNECT".into()));
    assert_eq!(out[0].latency_ns, None);
    assert_eq!(
        out[1].fields[4],
        Field::String("Records: 2  Duplicates: 0  Warnings: 0".into())
    );
}

/// A HandshakeResponse41 of `user` with an auth response of `auth` bytes (length-encoded) and
/// `database` (CLIENT_CONNECT_WITH_DB).
fn handshake_response(user: &str, auth: usize, database: &str) -> Vec<u8> {
    // CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | PLUGIN_AUTH_LENENC_CLIENT_DATA | WITH_DB.
    let caps: u32 = 0x200 | 0x8000 | (1 << 21) | 0x8;
    let mut r = caps.to_le_bytes().to_vec();
    r.resize(32, 0);
    r.extend_from_slice(user.as_bytes());
    r.push(0);
    r.push(auth as u8);
    r.extend(std::iter::repeat_n(0xaa, auth));
    r.extend_from_slice(database.as_bytes());
    r.push(0);
    r.extend_from_slice(b"mysql_native_password\0");
    r
}

#[test]
fn a_refused_login_is_a_record_with_its_user_database_and_error_but_no_password() {
    let err = b"\xff\x15\x04#28000Access denied for user 'app'@'localhost' (using password: YES)";
    let out = run(
        &mut client(),
        &[
            (
                Direction::Egress,
                10,
                pkt(1, &handshake_response("app", 20, "shop")),
            ),
            (Direction::Ingress, 15, pkt(2, err)),
        ],
    );
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].fields[..5],
        [
            Field::String("COM_CONNECT".into()),
            Field::String("user=app database=shop password=<redacted>".into()),
            Field::Null,
            Field::String("ERR".into()),
            Field::String(
                "1045 (28000): Access denied for user 'app'@'localhost' (using password: YES)"
                    .into()
            ),
        ]
    );
    assert_eq!(out[0].latency_ns, Some(5));
    assert_eq!(
        out[0].red,
        Red::Db {
            system: "mysql",
            operation: "_OTHER",
            error: "28000"
        }
    );
}

#[test]
fn a_login_switching_auth_method_is_answered_by_the_final_ok_and_commands_follow_in_order() {
    let mut switch = b"\xfemysql_native_password\x00".to_vec();
    switch.extend_from_slice(&[0x11; 20]);
    switch.push(0);
    let out = run(
        &mut client(),
        &[
            (
                Direction::Egress,
                10,
                pkt(1, &handshake_response("app", 0, "")),
            ),
            (Direction::Ingress, 11, pkt(2, &switch)),
            (Direction::Egress, 12, pkt(3, &[0x22; 20])),
            (Direction::Ingress, 13, pkt(4, OK)),
            (Direction::Egress, 20, pkt(0, b"\x03SELECT 1")),
            (Direction::Ingress, 21, pkt(1, OK)),
        ],
    );
    let got: Vec<_> = out
        .iter()
        .map(|r| (r.fields[0].clone(), r.fields[1].clone(), r.latency_ns))
        .collect();
    assert_eq!(
        got,
        [
            (
                Field::String("COM_CONNECT".into()),
                Field::String("user=app".into()),
                Some(3)
            ),
            (
                Field::String("COM_QUERY".into()),
                Field::String("SELECT 1".into()),
                Some(1)
            ),
        ]
    );
}

/// What MariaDB's Connector/J sends for a prepared statement run once and for a batch: the
/// prepare and, before its answer, the execute of statement -1 (the one prepared last).
#[test]
fn executes_of_the_statement_prepared_last_are_read_once_its_prepare_is_answered() {
    let mut p = client();
    let prepare_ok = |id: u8| {
        [
            pkt(1, &[0, id, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0]),
            pkt(2, PARAM),
            pkt(3, PARAM),
        ]
        .concat()
    };
    // Execute -1: 1 iteration, null bitmap 0, types VAR_STRING and LONG; 'pw', 7.
    let execute = pkt(
        0,
        b"\x17\xff\xff\xff\xff\x00\x01\x00\x00\x00\x00\x01\xfd\x00\x03\x00\x02pw\x07\x00\x00\x00",
    );
    // Bulk -1, types sent (VAR_STRING, LONG); rows ('a', 1), (NULL, 2), ('c', 3).
    let bulk = pkt(0, b"\xfa\xff\xff\xff\xff\x80\x00\xfd\x00\x03\x00\x00\x01a\x00\x01\x00\x00\x00\x01\x00\x02\x00\x00\x00\x00\x01c\x00\x03\x00\x00\x00");
    let out = run(
        &mut p,
        &[
            (
                Direction::Egress,
                1,
                [
                    pkt(0, b"\x16UPDATE users SET password = ? WHERE id = ?"),
                    execute,
                ]
                .concat(),
            ),
            (Direction::Ingress, 2, [prepare_ok(3), pkt(1, OK)].concat()),
            (
                Direction::Egress,
                3,
                [
                    pkt(0, b"\x16INSERT INTO t (secret, id) VALUES (?, ?)"),
                    bulk.clone(),
                ]
                .concat(),
            ),
            (Direction::Ingress, 4, [prepare_ok(4), pkt(1, OK)].concat()),
        ],
    );
    let shown: Vec<_> = out.iter().map(|r| r.fields[..3].to_vec()).collect();
    let s = |v: &str| Field::String(v.into());
    assert_eq!(
        shown,
        [
            vec![
                s("COM_STMT_PREPARE"),
                s("UPDATE users SET password = ? WHERE id = ?"),
                Field::Null
            ],
            vec![
                s("COM_STMT_EXECUTE"),
                s("UPDATE users SET password = ? WHERE id = ?"),
                s("<redacted>, 7")
            ],
            vec![
                s("COM_STMT_PREPARE"),
                s("INSERT INTO t (secret, id) VALUES (?, ?)"),
                Field::Null
            ],
            vec![
                s("COM_STMT_BULK_EXECUTE"),
                s("INSERT INTO t (secret, id) VALUES (?, ?)"),
                s("(<redacted>, 1), (NULL, 2), (<redacted>, 3)")
            ],
        ]
    );
    assert_eq!(
        out[3].red,
        Red::Db {
            system: "mysql",
            operation: "INSERT",
            error: ""
        }
    );
    // Once answered, -1 names the statement prepared last without waiting.
    let again = run(
        &mut p,
        &[
            (Direction::Egress, 5, pkt(0, &bulk[4..])),
            (Direction::Ingress, 6, pkt(1, OK)),
        ],
    );
    assert_eq!(
        again[0].fields[1],
        s("INSERT INTO t (secret, id) VALUES (?, ?)")
    );
}

#[test]
fn an_ssl_request_stops_parsing() {
    let mut ssl = 0x0000_0a00u32.to_le_bytes().to_vec(); // CLIENT_SSL | CLIENT_PROTOCOL_41
    ssl.resize(32, 0);
    let out = run(
        &mut client(),
        &[
            (Direction::Egress, 1, pkt(1, &ssl)),
            (Direction::Egress, 2, pkt(0, b"\x03SELECT 1")),
        ],
    );
    assert!(out.is_empty());
}

#[test]
fn a_big_row_split_by_a_gap_is_still_counted() {
    let mut p = client();
    let mut out = run(
        &mut p,
        &[
            (Direction::Egress, 1, pkt(0, b"\x03SELECT blob FROM t")),
            (
                Direction::Ingress,
                2,
                [
                    pkt(1, b"\x01"),
                    pkt(2, b"\x03def"),
                    pkt(3, b"\xfe\x00\x00\x02\x00"),
                ]
                .concat(),
            ),
        ],
    );
    let mut row = vec![0xfc, 0x50, 0xc3];
    row.resize(50_003, b'x');
    let row = pkt(4, &row);
    p.feed(Direction::Ingress, 3, &row[..1000], &mut out)
        .unwrap();
    p.gap(Direction::Ingress, 40_000);
    p.feed(Direction::Ingress, 4, &row[41_000..], &mut out)
        .unwrap();
    p.feed(
        Direction::Ingress,
        5,
        &pkt(5, b"\xfe\x00\x00\x02\x00"),
        &mut out,
    )
    .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].fields[5], Field::Int64(1));
}

/// A text result set of `rows` rows of ~110 bytes: column count, two definitions, EOF, rows,
/// then `end` (its sequence id follows the rows').
fn big_result(rows: usize, end: &[u8]) -> Vec<u8> {
    let mut a = [
        pkt(1, b"\x02"),
        pkt(
            2,
            b"\x03def\x00\x00\x00\x01n\x00\x0c\x3f\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00\x00",
        ),
        pkt(
            3,
            b"\x03def\x00\x00\x00\x03pad\x00\x0c\x21\x00\x90\x01\x00\x00\xfd\x00\x00\x00\x00\x00",
        ),
        pkt(4, b"\xfe\x00\x00\x02\x00"),
    ]
    .concat();
    let mut seq = 5u8;
    for n in 0..rows {
        let mut row = vec![6];
        row.extend_from_slice(format!("{n:06}").as_bytes());
        row.push(100);
        row.extend_from_slice(&[b'x'; 100]);
        a.extend(pkt(seq, &row));
        seq = seq.wrapping_add(1);
    }
    a.extend(pkt(seq, end));
    a
}

#[test]
fn a_result_set_read_in_pieces_larger_than_the_capture_ends_at_its_eof() {
    // mysql2 (Node.js) reads 64 KiB at a time: of each read only its first 12 KiB and last 512
    // bytes are captured; the rows between cannot be counted.
    for read in (16_385..=70_000).step_by(4_999).chain([65_536]) {
        let mut p = client();
        let mut out = Vec::new();
        let query = pkt(0, b"\x03SELECT n, pad FROM big");
        p.feed(Direction::Egress, 1, &query, &mut out).unwrap();
        let answer = big_result(20_000, b"\xfe\x00\x00\x22\x00");
        let reads = answer.len().div_ceil(read) as u64;
        feed_reads(&mut p, Direction::Ingress, 10, &answer, read, &mut out);
        assert_eq!(out.len(), 1, "read size {read}");
        assert_eq!(
            out[0].latency_ns,
            Some(10 + reads - 1 - 1),
            "read size {read}"
        );
        assert_eq!(out[0].fields[3], Field::String("OK".into()));
        assert_eq!(out[0].fields[5], Field::Null, "rows unknown");
        // In step again: the next answer is exact.
        p.feed(Direction::Egress, 100, &query, &mut out).unwrap();
        let small = big_result(3, b"\xfe\x00\x00\x22\x00");
        feed_reads(&mut p, Direction::Ingress, 200, &small, read, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].fields[5], Field::Int64(3));
        p.expire(u64::MAX, &mut out);
        assert_eq!(out.len(), 2, "nothing left unanswered");
    }
}

#[test]
fn an_err_ending_a_cut_result_set_is_its_response() {
    let mut p = client();
    let mut out = Vec::new();
    p.feed(Direction::Egress, 1, &pkt(0, b"\x03SELECT x"), &mut out)
        .unwrap();
    let answer = big_result(1_000, b"\xff\x7e\x05#HY000Query execution was interrupted");
    feed_reads(&mut p, Direction::Ingress, 2, &answer, 65_536, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].fields[3], Field::String("ERR".into()));
    assert_eq!(
        out[0].fields[4],
        Field::String("1406 (HY000): Query execution was interrupted".into())
    );
}

#[test]
fn after_an_answer_whose_end_was_lost_the_next_command_gets_its_own_answer() {
    let mut p = client();
    let mut out = Vec::new();
    p.feed(Direction::Egress, 1, &pkt(0, b"\x03SELECT x"), &mut out)
        .unwrap();
    let answer = big_result(100, b"\xfe\x00\x00\x22\x00");
    p.feed(Direction::Ingress, 2, &answer[..3_000], &mut out)
        .unwrap();
    // The rest, its EOF included, never comes (lost from the ring).
    p.gap(Direction::Ingress, 4_000);
    p.feed(
        Direction::Egress,
        5,
        &pkt(0, b"\x03DELETE FROM t"),
        &mut out,
    )
    .unwrap();
    p.feed(Direction::Ingress, 6, &pkt(1, OK), &mut out)
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].fields[4], Field::String("affected rows: 1".into()));
    assert_eq!(out[0].latency_ns, Some(1));
    p.expire(0, &mut out);
    assert_eq!(out.len(), 2, "the first command is emitted unanswered");
    assert_eq!((out[1].request_ns, out[1].latency_ns), (1, None));
    assert_eq!(
        out[1].unanswered(),
        None,
        "its answer was lost, it did not time out"
    );
}

#[test]
fn a_command_unanswered_at_the_close_ended_with_it_unless_its_answer_was_cut() {
    let mut p = client();
    let mut out = Vec::new();
    p.feed(
        Direction::Egress,
        1,
        &pkt(0, b"\x03SELECT sleep(60)"),
        &mut out,
    )
    .unwrap();
    p.feed(Direction::Egress, 2, &pkt(0, b"\x01"), &mut out)
        .unwrap();
    assert_eq!(out[0].unanswered(), None, "COM_QUIT expects no answer");
    p.expire(u64::MAX, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(
        (out[1].request_ns, out[1].unanswered()),
        (1, Some(crate::Unanswered::Closed))
    );

    // An answer under way lost bytes, then the connection closed.
    let mut p = client();
    let mut out = Vec::new();
    p.feed(Direction::Egress, 1, &pkt(0, b"\x03SELECT x"), &mut out)
        .unwrap();
    let answer = big_result(100, b"\xfe\x00\x00\x22\x00");
    p.feed(Direction::Ingress, 2, &answer[..3_000], &mut out)
        .unwrap();
    p.gap(Direction::Ingress, 4_000);
    p.expire(u64::MAX, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].latency_ns, out[0].unanswered()), (None, None));
}

#[test]
fn tokens_in_queries_executed_values_and_errors_are_redacted_under_any_name() {
    use crate::secret::tests::{JWT, github_token};
    let token = github_token();
    let query = format!("\x03INSERT INTO notes (body) VALUES ('{JWT}')");
    let mut execute = b"\x17\x05\x00\x00\x00\x00\x01\x00\x00\x00\x00\x01\xfd\x00\xfd\x00".to_vec();
    for value in ["https://hooks.example/x", &token] {
        execute.push(value.len() as u8);
        execute.extend_from_slice(value.as_bytes());
    }
    let mut error = b"\xff\x26\x04#23000".to_vec();
    error.extend_from_slice(format!("Duplicate entry '{token}' for key 'note'").as_bytes());
    let out = run(
        &mut client(),
        &[
            (Direction::Egress, 1, pkt(0, query.as_bytes())),
            (Direction::Ingress, 2, pkt(1, OK)),
            (
                Direction::Egress,
                3,
                pkt(0, b"\x16INSERT INTO hooks (url, note) VALUES (?, ?)"),
            ),
            (
                Direction::Ingress,
                4,
                [
                    pkt(1, b"\x00\x05\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00"),
                    pkt(2, PARAM),
                    pkt(3, PARAM),
                ]
                .concat(),
            ),
            (Direction::Egress, 5, pkt(0, &execute)),
            (Direction::Ingress, 6, pkt(1, &error)),
        ],
    );
    assert_eq!(out.len(), 3);
    assert_eq!(
        out[0].fields[1],
        Field::String("INSERT INTO notes (body) VALUES ('<redacted>')".into())
    );
    assert_eq!(
        out[2].fields[2],
        Field::String("'https://hooks.example/x', '<redacted>'".into())
    );
    let Field::String(error) = &out[2].fields[4] else {
        panic!("{:?}", out[2].fields)
    };
    assert!(
        error.ends_with("Duplicate entry '<redacted>' for key 'note'"),
        "{error}"
    );
}

#[test]
fn load_data_local_is_answered_by_the_ok_after_the_file_whose_packets_are_no_commands() {
    let info = b"Records: 2  Deleted: 0  Skipped: 0  Warnings: 0";
    let mut ok = b"\x00\x02\x00\x02\x00\x00\x00".to_vec();
    ok.push(info.len() as u8);
    ok.extend_from_slice(info);
    // 256 packets of content wrap the sequence id to 0: one of them reads like a COM_QUERY.
    let mut upload: Vec<u8> = (2..=255u8).flat_map(|seq| pkt(seq, b"a,1\n")).collect();
    upload.extend(pkt(0, b"\x03DROP TABLE t\n"));
    upload.extend(pkt(1, b""));
    let out = run(
        &mut client(),
        &[
            (
                Direction::Egress,
                10,
                pkt(0, b"\x03LOAD DATA LOCAL INFILE 'a.csv' INTO TABLE t"),
            ),
            (Direction::Ingress, 11, pkt(1, b"\xfba.csv")),
            (Direction::Egress, 12, upload),
            (Direction::Ingress, 30, pkt(2, &ok)),
            (Direction::Egress, 40, pkt(0, b"\x03COMMIT")),
            (Direction::Ingress, 41, pkt(1, OK)),
        ],
    );
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(
        out[0].latency_ns,
        Some(20),
        "timed to the answer after the file"
    );
    assert_eq!(out[0].fields[3], Field::String("OK".into()));
    assert_eq!(
        out[0].fields[4],
        Field::String(String::from_utf8_lossy(info).into())
    );
    assert_eq!(out[1].fields[1], Field::String("COMMIT".into()));
    assert_eq!(out[1].latency_ns, Some(1));
}

#[test]
fn load_data_local_refused_by_the_server_after_the_file_is_an_error() {
    let err = b"\xff\x94\x07#42000The used command is not allowed with this MariaDB version";
    let out = run(
        &mut client(),
        &[
            (
                Direction::Egress,
                10,
                pkt(0, b"\x03LOAD DATA LOCAL INFILE 'a.csv' INTO TABLE t"),
            ),
            (Direction::Ingress, 11, pkt(1, b"\xfba.csv")),
            // A client that may not read local files sends no content, only the end.
            (Direction::Egress, 12, pkt(2, b"")),
            (Direction::Ingress, 13, pkt(3, err)),
        ],
    );
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].latency_ns, Some(3));
    assert_eq!(out[0].fields[3], Field::String("ERR".into()));
    assert_eq!(
        out[0].red,
        Red::Db {
            system: "mysql",
            operation: "LOAD",
            error: "42000"
        }
    );
}
