//! Edge cases as byte constants; real conversations are in tests/pgsql_captures.rs.
use super::*;
use crate::captured::feed_reads;
use crate::{Field, Red};

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

const SSL_REQUEST: &[u8] = b"\x00\x00\x00\x08\x04\xd2\x16\x2f";
const READY: &[u8] = b"Z\x00\x00\x00\x05I";

fn client() -> Parser {
    Parser::new(Role::Client, &ParseConfig::default())
}

fn feed(p: &mut Parser, dir: Direction, ts: u64, data: &[u8], out: &mut Vec<Record>) {
    p.feed(dir, ts, data, out).unwrap();
}

#[test]
fn detect_knows_startup_messages_anywhere_and_tags_on_5432() {
    assert!(detect(Direction::Egress, SSL_REQUEST, 40000));
    let q = msg(b'Q', b"SELECT 1\0");
    assert!(detect(Direction::Egress, &q, 5432));
    assert!(!detect(Direction::Egress, &q, 40000));
    assert!(!detect(Direction::Egress, b"GET / HTTP/1.1\r\n", 5432));
}

#[test]
fn an_accepted_ssl_request_stops_parsing() {
    let mut p = client();
    let mut out = Vec::new();
    feed(&mut p, Direction::Egress, 1, SSL_REQUEST, &mut out);
    feed(&mut p, Direction::Ingress, 2, b"S", &mut out);
    feed(
        &mut p,
        Direction::Egress,
        3,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        &mut out,
    );
    p.expire(u64::MAX, &mut out);
    assert!(out.is_empty());
}

#[test]
fn pipelined_queries_are_answered_in_order() {
    let mut p = client();
    let mut out = Vec::new();
    let mut reqs = msg(b'Q', b"SELECT 1\0");
    reqs.extend(msg(b'Q', b"DELETE FROM t\0"));
    feed(&mut p, Direction::Egress, 10, &reqs, &mut out);
    let mut resp = msg(b'C', b"SELECT 1\0");
    resp.extend_from_slice(READY);
    resp.extend(msg(b'C', b"DELETE 3\0"));
    resp.extend_from_slice(READY);
    feed(&mut p, Direction::Ingress, 30, &resp, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].fields[1], Field::String("DELETE FROM t".into()));
    assert_eq!(out[1].fields[3], Field::String("DELETE 3".into()));
    assert_eq!(
        out[1].red,
        Red::Db {
            system: "postgresql",
            operation: "DELETE",
            error: ""
        }
    );
    assert_eq!(out[1].latency_ns, Some(20));
}

#[test]
fn a_huge_data_row_is_skipped_even_across_a_gap() {
    let mut p = client();
    let mut out = Vec::new();
    feed(
        &mut p,
        Direction::Egress,
        1,
        &msg(b'Q', b"SELECT blob\0"),
        &mut out,
    );
    let row = msg(b'D', &vec![7u8; 100_000]);
    feed(&mut p, Direction::Ingress, 2, &row[..4000], &mut out);
    p.gap(Direction::Ingress, 90_000);
    feed(&mut p, Direction::Ingress, 3, &row[94_000..], &mut out);
    let mut end = msg(b'C', b"SELECT 1\0");
    end.extend_from_slice(READY);
    feed(&mut p, Direction::Ingress, 4, &end, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].fields[4], Field::Int64(1));
    assert_eq!(out[0].fields[3], Field::String("SELECT 1".into()));
}

#[test]
fn an_answer_whose_end_was_lost_leaves_the_next_request_its_own_answer() {
    let mut p = client();
    let mut out = Vec::new();
    let q = msg(b'Q', b"SELECT 1\0");
    feed(&mut p, Direction::Egress, 1, &q, &mut out);
    let err = msg(b'E', b"SERROR\0C22012\0Mdivision by zero\0\0");
    feed(&mut p, Direction::Ingress, 2, &err[..6], &mut out);
    // The rest of the error and its ReadyForQuery never come (lost from the ring).
    p.gap(Direction::Ingress, 4);
    feed(&mut p, Direction::Egress, 5, &q, &mut out);
    let mut ok = msg(b'C', b"SELECT 1\0");
    ok.extend_from_slice(READY);
    feed(&mut p, Direction::Ingress, 6, &ok, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].fields[3], Field::String("SELECT 1".into()));
    assert_eq!(out[0].latency_ns, Some(1));
    p.expire(0, &mut out);
    assert_eq!(out.len(), 2, "the first request is emitted unanswered");
    assert_eq!((out[1].request_ns, out[1].latency_ns), (1, None));
    assert_eq!(
        out[1].unanswered(),
        None,
        "its answer was lost, it did not time out"
    );
}

#[test]
fn a_query_unanswered_at_the_close_ended_with_it_unless_its_answer_was_cut() {
    let mut p = client();
    let mut out = Vec::new();
    feed(
        &mut p,
        Direction::Egress,
        1,
        &msg(b'Q', b"SELECT pg_sleep(60)\0"),
        &mut out,
    );
    p.expire(2, &mut out);
    feed(
        &mut p,
        Direction::Egress,
        3,
        &msg(b'Q', b"SELECT 1\0"),
        &mut out,
    );
    p.expire(u64::MAX, &mut out);
    let ends: Vec<_> = out.iter().map(|r| (r.request_ns, r.unanswered())).collect();
    assert_eq!(
        ends,
        [
            (1, Some(crate::Unanswered::Timeout)),
            (3, Some(crate::Unanswered::Closed))
        ]
    );

    // Its answer lost bytes, then the connection closed.
    let mut p = client();
    let mut out = Vec::new();
    feed(
        &mut p,
        Direction::Egress,
        1,
        &msg(b'Q', b"SELECT 1\0"),
        &mut out,
    );
    let err = msg(b'E', b"SERROR\0C22012\0Mdivision by zero\0\0");
    feed(&mut p, Direction::Ingress, 2, &err[..6], &mut out);
    p.gap(Direction::Ingress, 4);
    p.expire(u64::MAX, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].latency_ns, out[0].unanswered()), (None, None));
}

/// RowDescription, `rows` DataRows of ~110 bytes, CommandComplete, ReadyForQuery.
fn big_answer(rows: usize) -> Vec<u8> {
    let mut a = msg(
        b'T',
        b"\x00\x02n\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
    );
    for n in 0..rows {
        let mut row = b"\x00\x02\x00\x00\x00\x06".to_vec();
        row.extend_from_slice(format!("{n:06}").as_bytes());
        row.extend_from_slice(b"\x00\x00\x00\x64");
        row.extend_from_slice(&[b'x'; 100]);
        a.extend(msg(b'D', &row));
    }
    a.extend(msg(b'C', format!("SELECT {rows}\0").as_bytes()));
    a.extend_from_slice(READY);
    a
}

#[test]
fn an_answer_read_in_pieces_larger_than_the_capture_ends_at_its_ready_for_query() {
    // node-postgres reads 64 KiB at a time: of each read only its first 12 KiB and last 512 bytes
    // are captured, so the rows are not all seen and the frames cannot be followed between.
    // Reads end anywhere in a row: every offset of the ~115-byte rows comes up.
    for read in (16_385..=70_000).step_by(4_999).chain([65_536]) {
        let mut p = client();
        let mut out = Vec::new();
        let q = msg(b'Q', b"SELECT n, pad FROM big\0");
        feed(&mut p, Direction::Egress, 1, &q, &mut out);
        let answer = big_answer(20_000);
        let reads = answer.len().div_ceil(read) as u64;
        feed_reads(&mut p, Direction::Ingress, 10, &answer, read, &mut out);
        assert_eq!(out.len(), 1, "read size {read}");
        assert_eq!(out[0].fields[3], Field::String("SELECT 20000".into()));
        assert_eq!(out[0].fields[4], Field::Int64(20_000), "the tag's count");
        assert_eq!(
            out[0].latency_ns,
            Some(10 + reads - 1 - 1),
            "read size {read}"
        );
        // In step again: the next answer is exact.
        feed(&mut p, Direction::Egress, 100, &q, &mut out);
        feed_reads(
            &mut p,
            Direction::Ingress,
            200,
            &big_answer(3),
            read,
            &mut out,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].fields[4], Field::Int64(3));
        p.expire(u64::MAX, &mut out);
        assert_eq!(out.len(), 2, "nothing left unanswered");
    }
}

#[test]
fn an_error_ending_a_cut_answer_is_its_response_with_rows_unknown() {
    let mut p = client();
    let mut out = Vec::new();
    feed(
        &mut p,
        Direction::Egress,
        1,
        &msg(b'Q', b"SELECT 1/0\0"),
        &mut out,
    );
    let mut answer = big_answer(1_000);
    answer.truncate(answer.len() - READY.len() - 17);
    answer.extend(msg(b'E', b"SERROR\0C22012\0Mdivision by zero\0\0"));
    answer.extend_from_slice(READY);
    feed_reads(&mut p, Direction::Ingress, 2, &answer, 65_536, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].fields[3],
        Field::String("ERROR 22012: division by zero".into())
    );
    assert_eq!(out[0].fields[4], Field::Null);
}

#[test]
fn a_chunk_starting_inside_a_row_is_no_message_chain() {
    let answer = big_answer(100);
    let row_start = answer.iter().position(|&b| b == b'D').unwrap();
    assert_eq!(backend::message_chain(&answer[row_start..]), Some(b'D'));
    for offset in 1..110 {
        let at = row_start + offset;
        assert_eq!(
            backend::message_chain(&answer[at..]),
            None,
            "offset {offset}"
        );
    }
}

#[test]
fn a_fatal_error_ends_the_startup_exchange() {
    let mut p = client();
    let mut out = Vec::new();
    let startup = b"\x00\x00\x00\x12\x00\x03\x00\x00user\x00bob\x00\x00";
    feed(&mut p, Direction::Egress, 1, startup, &mut out);
    feed(
        &mut p,
        Direction::Ingress,
        2,
        &msg(b'R', &3u32.to_be_bytes()),
        &mut out,
    );
    feed(
        &mut p,
        Direction::Egress,
        3,
        &msg(b'p', b"hunter2\0"),
        &mut out,
    );
    let fatal = msg(
        b'E',
        b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user \"bob\"\0\0",
    );
    feed(&mut p, Direction::Ingress, 4, &fatal, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].fields[1],
        Field::String("user=bob password=<redacted>".into())
    );
    let Field::String(resp) = &out[0].fields[3] else {
        panic!()
    };
    assert!(
        resp.starts_with("FATAL 28P01: password authentication failed"),
        "{resp}"
    );
}

#[test]
fn binary_parameters_are_decoded_by_declared_type() {
    let mut p = client();
    let mut out = Vec::new();
    // Parse "s1" with one int4 parameter, then Bind in binary format, Execute, Sync.
    let mut reqs = msg(b'P', b"s1\0SELECT $1\0\x00\x01\x00\x00\x00\x17");
    reqs.extend(msg(
        b'B',
        b"\0s1\0\x00\x01\x00\x01\x00\x01\x00\x00\x00\x04\xff\xff\xff\xfe\x00\x00",
    ));
    reqs.extend(msg(b'E', b"\0\0\0\0\0"));
    reqs.extend(msg(b'S', b""));
    feed(&mut p, Direction::Egress, 1, &reqs, &mut out);
    let mut resp = msg(b'1', b"");
    resp.extend(msg(b'2', b""));
    resp.extend(msg(b'C', b"SELECT 1\0"));
    resp.extend_from_slice(READY);
    feed(&mut p, Direction::Ingress, 2, &resp, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].fields[0], Field::String("Execute".into()));
    assert_eq!(out[0].fields[1], Field::String("SELECT $1".into()));
    assert_eq!(out[0].fields[2], Field::String("$1=-2".into()));
}

#[test]
fn garbage_from_the_client_is_an_error_not_a_panic() {
    let mut p = client();
    let err = p
        .feed(
            Direction::Egress,
            1,
            b"\xde\xad\xbe\xef\x00\x00",
            &mut Vec::new(),
        )
        .unwrap_err();
    assert_eq!(err.reason, "unknown_frontend_tag");
}

#[test]
fn a_password_in_a_prepared_statement_is_redacted_wherever_its_text_is_shown() {
    let mut p = client();
    let mut out = Vec::new();
    // Parse a named statement with a literal password, then Bind and Execute it by name.
    let mut reqs = msg(
        b'P',
        b"s1\0UPDATE users SET password = 'hunter2' WHERE id = $1\0\x00\x00",
    );
    reqs.extend(msg(b'S', b""));
    reqs.extend(msg(
        b'B',
        b"\0s1\0\x00\x00\x00\x01\x00\x00\x00\x017\x00\x00",
    ));
    reqs.extend(msg(b'E', b"\0\0\0\0\0"));
    reqs.extend(msg(b'S', b""));
    feed(&mut p, Direction::Egress, 1, &reqs, &mut out);
    let mut resp = msg(b'1', b"");
    resp.extend_from_slice(READY);
    resp.extend(msg(b'2', b""));
    resp.extend(msg(b'C', b"UPDATE 1\0"));
    resp.extend_from_slice(READY);
    feed(&mut p, Direction::Ingress, 2, &resp, &mut out);
    let shown: Vec<_> = out.iter().map(|r| r.fields[..3].to_vec()).collect();
    let text = Field::String("UPDATE users SET password = '<redacted>' WHERE id = $1".into());
    assert_eq!(
        shown,
        [
            vec![Field::String("Parse".into()), text.clone(), Field::Null],
            vec![
                Field::String("Execute".into()),
                text,
                Field::String("$1='7'".into())
            ],
        ]
    );
}

#[test]
fn a_value_bound_to_a_password_column_is_redacted_in_every_execute() {
    let mut p = client();
    let mut out = Vec::new();
    let mut reqs = msg(
        b'P',
        b"s2\0UPDATE users SET password = $1 WHERE id = $2\0\x00\x00",
    );
    // Two executions: text format, then binary.
    reqs.extend(msg(
        b'B',
        b"\0s2\0\x00\x00\x00\x02\x00\x00\x00\x07hunter2\x00\x00\x00\x0241\x00\x00",
    ));
    reqs.extend(msg(b'E', b"\0\0\0\0\0"));
    reqs.extend(msg(b'S', b""));
    reqs.extend(bind_execute(b"s2", &[b"hunter3", &42i32.to_be_bytes()]));
    reqs.extend(msg(b'S', b""));
    feed(&mut p, Direction::Egress, 1, &reqs, &mut out);
    let mut resp = msg(b'1', b"");
    resp.extend(msg(b'2', b""));
    resp.extend(msg(b'C', b"UPDATE 1\0"));
    resp.extend_from_slice(READY);
    resp.extend(msg(b'2', b""));
    resp.extend(msg(b'C', b"UPDATE 1\0"));
    resp.extend_from_slice(READY);
    feed(&mut p, Direction::Ingress, 2, &resp, &mut out);
    let params: Vec<_> = out.iter().map(|r| r.fields[2].clone()).collect();
    assert_eq!(
        params,
        [
            Field::String("$1=<redacted>, $2='41'".into()),
            Field::String("$1=<redacted>, $2=\\x0000002a".into()),
        ]
    );
}

/// A Bind of statement `stmt` to the unnamed portal with binary values, and its Execute.
fn bind_execute(stmt: &[u8], values: &[&[u8]]) -> Vec<u8> {
    let mut body = b"\0".to_vec();
    body.extend_from_slice(stmt);
    body.push(0);
    body.extend_from_slice(&1u16.to_be_bytes());
    body.extend_from_slice(&1u16.to_be_bytes());
    body.extend_from_slice(&(values.len() as u16).to_be_bytes());
    for v in values {
        body.extend_from_slice(&(v.len() as u32).to_be_bytes());
        body.extend_from_slice(v);
    }
    body.extend_from_slice(&0u16.to_be_bytes());
    let mut m = msg(b'B', &body);
    m.extend(msg(b'E', b"\0\0\0\0\0"));
    m
}

/// What pgx sends for a batch: the statements described first (their parameter types left to the
/// server), then every Execute with binary values in one go, one Sync.
fn pgx_batch(p: &mut Parser, failing: Option<usize>) -> Vec<Record> {
    let mut out = Vec::new();
    let mut reqs = msg(b'P', b"s1\0INSERT INTO g VALUES ($1, $2)\0\x00\x00");
    reqs.extend(msg(b'D', b"Ss1\0"));
    reqs.extend(msg(b'P', b"s2\0SELECT count(*) FROM g\0\x00\x00"));
    reqs.extend(msg(b'D', b"Ss2\0"));
    reqs.extend(msg(b'S', b""));
    feed(p, Direction::Egress, 1, &reqs, &mut out);
    let mut resp = msg(b'1', b"");
    resp.extend(msg(b't', b"\x00\x02\x00\x00\x00\x17\x00\x00\x00\x19"));
    resp.extend(msg(b'n', b""));
    resp.extend(msg(b'1', b""));
    resp.extend(msg(b't', b"\x00\x00"));
    resp.extend(msg(b'T', b"\x00\x00"));
    resp.extend_from_slice(READY);
    feed(p, Direction::Ingress, 2, &resp, &mut out);

    let mut reqs = bind_execute(b"s1", &[&0i32.to_be_bytes(), b"n0"]);
    reqs.extend(bind_execute(b"s1", &[&1i32.to_be_bytes(), b"n1"]));
    reqs.extend(bind_execute(b"s2", &[]));
    reqs.extend(msg(b'S', b""));
    feed(p, Direction::Egress, 10, &reqs, &mut out);
    let mut resp = Vec::new();
    for step in 0..2 {
        resp.extend(msg(b'2', b""));
        if failing == Some(step) {
            resp.extend(msg(b'E', b"SERROR\0C23505\0Mduplicate key\0\0"));
            break;
        }
        resp.extend(msg(b'C', b"INSERT 0 1\0"));
        feed(p, Direction::Ingress, 11 + step as u64, &resp, &mut out);
        resp.clear();
    }
    if failing.is_none() {
        resp.extend(msg(b'2', b""));
        resp.extend(msg(b'D', b"\x00\x01\x00\x00\x00\x012"));
        resp.extend(msg(b'C', b"SELECT 1\0"));
    }
    resp.extend_from_slice(READY);
    feed(p, Direction::Ingress, 20, &resp, &mut out);
    out
}

fn shown(out: &[Record]) -> Vec<Vec<Field>> {
    out.iter()
        .map(|r| {
            let mut f = r.fields.clone();
            f.push(r.latency_ns.map_or(Field::Null, |l| Field::Int64(l as i64)));
            f
        })
        .collect()
}

fn s(text: &str) -> Field {
    Field::String(text.into())
}

#[test]
fn each_execute_of_a_pipelined_batch_is_a_record_with_its_own_statement_values_and_result() {
    let out = pgx_batch(&mut client(), None);
    let insert = s("INSERT INTO g VALUES ($1, $2)");
    assert_eq!(
        shown(&out),
        [
            vec![
                s("Describe"),
                insert.clone(),
                Field::Null,
                s("ParseComplete, ParameterDescription, NoData, RowDescription"),
                Field::Int64(0),
                Field::Int64(1),
            ],
            // Binary values decoded by the types the server described.
            vec![
                s("Execute"),
                insert.clone(),
                s("$1=0, $2='n0'"),
                s("INSERT 0 1"),
                Field::Int64(0),
                Field::Int64(1),
            ],
            vec![
                s("Execute"),
                insert,
                s("$1=1, $2='n1'"),
                s("INSERT 0 1"),
                Field::Int64(0),
                Field::Int64(2),
            ],
            // The last one ends with the batch, at its ReadyForQuery.
            vec![
                s("Execute"),
                s("SELECT count(*) FROM g"),
                Field::Null,
                s("SELECT 1"),
                Field::Int64(1),
                Field::Int64(10),
            ],
        ]
    );
}

#[test]
fn after_an_error_in_a_batch_the_executes_the_server_skipped_say_so() {
    let out = pgx_batch(&mut client(), Some(1));
    let answers: Vec<_> = shown(&out[1..])
        .into_iter()
        .map(|r| (r[2].clone(), r[3].clone(), r[5].clone()))
        .collect();
    assert_eq!(
        answers,
        [
            (s("$1=0, $2='n0'"), s("INSERT 0 1"), Field::Int64(1)),
            (
                s("$1=1, $2='n1'"),
                s("ERROR 23505: duplicate key"),
                Field::Int64(10)
            ),
            (
                Field::Null,
                s("not executed: an earlier message of the batch failed"),
                Field::Null
            ),
        ]
    );
}

/// Statement `u`, `UPDATE t SET v = v WHERE k < $1` (int4), prepared and answered: its Executes
/// are answered `UPDATE <n>`, a count of their own, so each answer tells whose it is.
fn prepare_update(p: &mut Parser, out: &mut Vec<Record>) {
    let mut reqs = msg(
        b'P',
        b"u\0UPDATE t SET v = v WHERE k < $1\0\x00\x01\x00\x00\x00\x17",
    );
    reqs.extend(msg(b'S', b""));
    feed(p, Direction::Egress, 1, &reqs, out);
    let mut resp = msg(b'1', b"");
    resp.extend_from_slice(READY);
    feed(p, Direction::Ingress, 2, &resp, out);
}

/// The answers to `steps` Executes of `u`, the i-th `UPDATE i`, and the batch's ReadyForQuery.
fn update_answers(steps: usize) -> Vec<u8> {
    let mut answer = Vec::new();
    for i in 0..steps {
        answer.extend(msg(b'2', b""));
        answer.extend(msg(b'C', format!("UPDATE {i}\0").as_bytes()));
    }
    answer.extend_from_slice(READY);
    answer
}

#[test]
fn a_batch_answer_read_beyond_the_capture_never_gives_a_step_another_step_s_result() {
    // 3,000 UPDATEs pipelined, each answered with its own count (`UPDATE i`), read 64 KiB at a
    // time: the answers in the uncaptured middle of each read are lost.
    for read in [16_385, 40_000, 65_536] {
        let mut p = client();
        let mut out = Vec::new();
        prepare_update(&mut p, &mut out);
        let steps = 3_000;
        let mut reqs = Vec::new();
        for i in 0..steps {
            reqs.extend(bind_execute(b"u", &[&(i as i32).to_be_bytes()]));
        }
        reqs.extend(msg(b'S', b""));
        feed(&mut p, Direction::Egress, 10, &reqs, &mut out);
        let answer = update_answers(steps);
        feed_reads(&mut p, Direction::Ingress, 100, &answer, read, &mut out);
        p.expire(u64::MAX, &mut out);

        let executes = &out[1..];
        assert_eq!(executes.len(), steps, "read size {read}");
        let mut answered = 0;
        for r in executes {
            let Field::String(params) = &r.fields[2] else {
                panic!("{r:?}");
            };
            let i = params.trim_start_matches("$1=");
            match &r.fields[3] {
                Field::String(resp) => {
                    assert_eq!(resp, &format!("UPDATE {i}"), "read size {read}");
                    answered += 1;
                }
                _ => assert_eq!(r.latency_ns, None),
            }
        }
        // The first read's answers in order, and the last's from the end.
        assert!(answered > 500, "read size {read}: {answered} answered");
        assert!(answered < steps, "read size {read}: answers were lost");
    }
}

#[test]
fn a_pipeline_answered_in_part_before_its_sync_pairs_each_answer_with_its_statement() {
    // A server answers a pipeline longer than its input buffer as it reads it: these answers
    // come before the client's Sync has been seen.
    let mut p = client();
    let mut out = Vec::new();
    let mut reqs = msg(
        b'P',
        b"u\0UPDATE t SET v = v WHERE k < $1\0\x00\x01\x00\x00\x00\x17",
    );
    reqs.extend(bind_execute(b"u", &[&7i32.to_be_bytes()]));
    reqs.extend(bind_execute(b"u", &[&8i32.to_be_bytes()]));
    feed(&mut p, Direction::Egress, 1, &reqs, &mut out);
    let mut resp = msg(b'1', b"");
    resp.extend(msg(b'2', b""));
    resp.extend(msg(b'C', b"UPDATE 7\0"));
    feed(&mut p, Direction::Ingress, 2, &resp, &mut out);
    let mut reqs = bind_execute(b"u", &[&9i32.to_be_bytes()]);
    reqs.extend(msg(b'S', b""));
    feed(&mut p, Direction::Egress, 3, &reqs, &mut out);
    let mut resp = msg(b'2', b"");
    resp.extend(msg(b'C', b"UPDATE 8\0"));
    resp.extend(msg(b'2', b""));
    resp.extend(msg(b'C', b"UPDATE 9\0"));
    resp.extend_from_slice(READY);
    feed(&mut p, Direction::Ingress, 4, &resp, &mut out);
    p.expire(u64::MAX, &mut out);
    let answers: Vec<_> = shown(&out)
        .into_iter()
        .map(|r| (r[2].clone(), r[3].clone(), r[5].clone()))
        .collect();
    assert_eq!(
        answers,
        [
            (s("$1=7"), s("UPDATE 7"), Field::Int64(1)),
            (s("$1=8"), s("UPDATE 8"), Field::Int64(3)),
            (s("$1=9"), s("UPDATE 9"), Field::Int64(3)),
        ]
    );
}

#[test]
fn a_pipeline_written_beyond_the_capture_answers_the_statements_seen_before_the_loss() {
    // pgx writes a whole batch at once: of a write longer than the capture, its first 12 KiB and
    // its last 512 bytes, which start anywhere in a message and are not followed. A batch
    // shifted by 0..48 bytes has its tail start at every offset of a message.
    for shift in 0..48 {
        pipeline_written_beyond_the_capture(shift);
    }
}

fn pipeline_written_beyond_the_capture(shift: usize) {
    let mut p = client();
    let mut out = Vec::new();
    prepare_update(&mut p, &mut out);
    let steps = 1_500;
    let mut pad = b"pad\0".to_vec();
    pad.extend(std::iter::repeat_n(b' ', shift));
    pad.extend_from_slice(b"SELECT 1\0\x00\x00");
    let mut batch = msg(b'P', &pad);
    for i in 0..steps {
        batch.extend(bind_execute(b"u", &[&(i as i32).to_be_bytes()]));
    }
    batch.extend(msg(b'S', b""));
    assert!(batch.len() > 40_000);
    feed_reads(&mut p, Direction::Egress, 10, &batch, batch.len(), &mut out);
    let mut answer = msg(b'1', b"");
    answer.extend(update_answers(steps));
    for piece in answer.chunks(8_192) {
        feed(&mut p, Direction::Ingress, 20, piece, &mut out);
    }
    // In step again with the next request.
    let mut next = bind_execute(b"u", &[&7i32.to_be_bytes()]);
    next.extend(msg(b'S', b""));
    feed(&mut p, Direction::Egress, 30, &next, &mut out);
    let mut resp = msg(b'2', b"");
    resp.extend(msg(b'C', b"UPDATE 7\0"));
    resp.extend_from_slice(READY);
    feed(&mut p, Direction::Ingress, 40, &resp, &mut out);
    p.expire(u64::MAX, &mut out);

    let executes = &out[1..];
    let right = |r: &Record| match (&r.fields[2], &r.fields[3]) {
        (Field::String(params), Field::String(resp)) => {
            *resp == format!("UPDATE {}", params.trim_start_matches("$1="))
        }
        _ => false,
    };
    let seen = executes.len() - 1;
    assert!(
        (250..steps).contains(&seen),
        "shift {shift}: {seen} statements seen"
    );
    assert!(executes.iter().all(right), "shift {shift}: {executes:?}");
    assert_eq!(executes[seen].fields[2], Field::String("$1=7".into()));
}

#[test]
fn the_rows_of_a_copy_to_the_client_are_counted() {
    let mut p = client();
    let mut out = Vec::new();
    feed(
        &mut p,
        Direction::Egress,
        1,
        &msg(b'Q', b"COPY c TO STDOUT\0"),
        &mut out,
    );
    let mut resp = msg(b'H', b"\x00\x00\x02\x00\x00\x00\x00");
    resp.extend(msg(b'd', b"1\tone\n"));
    resp.extend(msg(b'd', b"2\ttwo\n"));
    resp.extend(msg(b'c', b""));
    resp.extend(msg(b'C', b"COPY 2\0"));
    resp.extend_from_slice(READY);
    feed(&mut p, Direction::Ingress, 2, &resp, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].fields[3], Field::String("COPY 2".into()));
    assert_eq!(out[0].fields[4], Field::Int64(2));
}

/// A Bind of statement `stmt` to the unnamed portal with text values, and its Execute.
fn bind_text_execute(stmt: &[u8], values: &[&[u8]]) -> Vec<u8> {
    let mut body = b"\0".to_vec();
    body.extend_from_slice(stmt);
    body.push(0);
    body.extend_from_slice(&0u16.to_be_bytes());
    body.extend_from_slice(&(values.len() as u16).to_be_bytes());
    for v in values {
        body.extend_from_slice(&(v.len() as u32).to_be_bytes());
        body.extend_from_slice(v);
    }
    body.extend_from_slice(&0u16.to_be_bytes());
    let mut m = msg(b'B', &body);
    m.extend(msg(b'E', b"\0\0\0\0\0"));
    m
}

#[test]
fn tokens_in_statements_bound_values_and_error_messages_are_redacted_under_any_name() {
    use crate::secret::tests::{JWT, github_token};
    let token = github_token();
    let mut p = client();
    let mut out = Vec::new();
    let query = format!("SELECT * FROM sessions WHERE body = '{JWT}'\0");
    feed(
        &mut p,
        Direction::Egress,
        1,
        &msg(b'Q', query.as_bytes()),
        &mut out,
    );
    let mut resp = msg(b'C', b"SELECT 0\0");
    resp.extend_from_slice(READY);
    feed(&mut p, Direction::Ingress, 2, &resp, &mut out);
    let mut reqs = msg(b'P', b"s3\0INSERT INTO audit (note) VALUES ($1)\0\x00\x00");
    reqs.extend(bind_text_execute(
        b"s3",
        &[format!("pushed {token}").as_bytes()],
    ));
    reqs.extend(msg(b'S', b""));
    feed(&mut p, Direction::Egress, 3, &reqs, &mut out);
    let mut resp = msg(b'1', b"");
    resp.extend(msg(b'2', b""));
    let error = format!("SERROR\0C23505\0Mduplicate key value: {token}\0\0");
    resp.extend(msg(b'E', error.as_bytes()));
    resp.extend_from_slice(READY);
    feed(&mut p, Direction::Ingress, 4, &resp, &mut out);
    let fields: Vec<_> = out.iter().map(|r| r.fields[1..4].to_vec()).collect();
    assert_eq!(
        fields,
        [
            vec![
                s("SELECT * FROM sessions WHERE body = '<redacted>'"),
                Field::Null,
                s("SELECT 0"),
            ],
            vec![
                s("INSERT INTO audit (note) VALUES ($1)"),
                s("$1='pushed <redacted>'"),
                s("ERROR 23505: duplicate key value: <redacted>"),
            ],
        ]
    );
}

#[test]
fn a_bound_value_cut_by_the_capture_inside_a_token_has_it_redacted() {
    // Kept of a Bind: the body limit and 256 bytes more; this JWT's payload runs past that.
    let jwt = format!("eyJhbGciOiJIUzI1NiJ9.eyJ{}.c2ln", "a".repeat(500));
    let mut p = Parser::new(
        Role::Client,
        &ParseConfig {
            max_body_bytes: 100,
            redact: true,
        },
    );
    let mut out = Vec::new();
    let mut reqs = msg(b'P', b"s4\0INSERT INTO notes (body) VALUES ($1)\0\x00\x00");
    reqs.extend(bind_text_execute(b"s4", &[format!("x {jwt}").as_bytes()]));
    reqs.extend(msg(b'S', b""));
    feed(&mut p, Direction::Egress, 1, &reqs, &mut out);
    let mut resp = msg(b'1', b"");
    resp.extend(msg(b'2', b""));
    resp.extend(msg(b'C', b"INSERT 0 1\0"));
    resp.extend_from_slice(READY);
    feed(&mut p, Direction::Ingress, 2, &resp, &mut out);
    assert_eq!(out[0].fields[2], s("$1='x <redacted>', …"));
}

#[test]
fn a_cancel_request_is_a_record_naming_the_backend_but_not_its_secret_key() {
    // psycopg2's cancel(), pgx's cancelled context: 16 bytes on a connection of their own, which
    // the server closes without an answer.
    let mut cancel = b"\x00\x00\x00\x10\x04\xd2\x16\x2e".to_vec();
    cancel.extend_from_slice(&28_636u32.to_be_bytes());
    cancel.extend_from_slice(b"\x5e\xc7\x2e\x7b");
    assert!(detect(Direction::Egress, &cancel, 40000));
    let mut p = client();
    let mut out = Vec::new();
    feed(&mut p, Direction::Egress, 7, &cancel, &mut out);
    p.expire(u64::MAX, &mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    let r = &out[0];
    assert_eq!(r.request_ns, 7);
    assert_eq!(r.latency_ns, None);
    assert_eq!(r.fields[0], Field::String("CancelRequest".into()));
    assert_eq!(r.fields[1], Field::String("pid=28636".into()));
    assert_eq!(r.fields[3], Field::Null);
    // Never answered by design: no error, so not observed as a request that got no answer.
    assert_eq!(
        r.red,
        Red::Db {
            system: "postgresql",
            operation: crate::sql::OTHER,
            error: ""
        }
    );
}
