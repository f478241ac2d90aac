//! Edge cases as byte constants; captured conversations are replayed in tests/captures.rs.
use super::*;
use crate::{Field, Record, Red, Unanswered};

fn parser() -> Parser {
    Parser::new(Role::Client, &ParseConfig::default())
}

fn row(record: &Record) -> (String, String, String) {
    let s = |i: usize| match &record.fields[i] {
        Field::String(s) => s.clone(),
        other => panic!("column {i} is {other:?}"),
    };
    (s(0), s(1), s(2))
}

fn rows(out: &[Record]) -> Vec<(String, String, String)> {
    out.iter().map(row).collect()
}

fn r(cmd: &str, args: &str, resp: &str) -> (String, String, String) {
    (cmd.to_string(), args.to_string(), resp.to_string())
}

#[test]
fn inline_commands_are_parsed_like_arrays() {
    let mut p = parser();
    let mut out = Vec::new();
    p.feed(Direction::Egress, 100, b"PING\r\nset k  v\r\n", &mut out)
        .unwrap();
    p.feed(Direction::Ingress, 200, b"+PONG\r\n+OK\r\n", &mut out)
        .unwrap();
    assert_eq!(
        rows(&out),
        [r("PING", "[]", "PONG"), r("SET", r#"["k","v"]"#, "OK")]
    );
    assert_eq!(
        out[1].red,
        Red::Db {
            system: "redis",
            operation: "SET",
            error: ""
        }
    );
}

#[test]
fn a_transaction_whose_queued_command_failed_carries_that_error() {
    let mut p = parser();
    let mut out = Vec::new();
    p.feed(
        Direction::Egress,
        100,
        b"*1\r\n$5\r\nMULTI\r\n*2\r\n$4\r\nINCR\r\n$1\r\ns\r\n*3\r\n$3\r\nSET\r\n$1\r\nn\r\n$1\r\n1\r\n*1\r\n$4\r\nEXEC\r\n",
        &mut out,
    )
    .unwrap();
    p.feed(
        Direction::Ingress,
        200,
        b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n-WRONGTYPE Operation against a key holding the wrong kind of value\r\n+OK\r\n",
        &mut out,
    )
    .unwrap();
    assert_eq!(out.len(), 4, "{:?}", rows(&out));
    assert_eq!(
        out[3].red,
        Red::Db {
            system: "redis",
            operation: "EXEC",
            error: "WRONGTYPE"
        }
    );
    // The queued command itself was only answered QUEUED.
    assert_eq!(
        out[1].red,
        Red::Db {
            system: "redis",
            operation: "INCR",
            error: ""
        }
    );
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let mut p = parser();
    let mut out = Vec::new();
    p.feed(Direction::Egress, 100, b"*1\r\n$4\r\nPING\r\n", &mut out)
        .unwrap();
    let nested = b"*1\r\n".repeat(100_000);
    let err = p
        .feed(Direction::Ingress, 200, &nested, &mut out)
        .unwrap_err();
    assert_eq!(err.reason, "nesting_too_deep");
    assert_eq!(out.len(), 1, "the waiting command is emitted unanswered");
    assert_eq!(out[0].latency_ns, None);
}

#[test]
fn a_gap_inside_a_bulk_string_keeps_sync() {
    let mut p = parser();
    let mut out = Vec::new();
    p.feed(
        Direction::Egress,
        100,
        b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n",
        &mut out,
    )
    .unwrap();
    p.feed(Direction::Ingress, 200, b"$1000\r\nabc", &mut out)
        .unwrap();
    p.gap(Direction::Ingress, 990);
    p.feed(Direction::Ingress, 300, b"1234567\r\n+PONG\r\n", &mut out)
        .unwrap();
    assert_eq!(
        rows(&out),
        [r("GET", r#"["k"]"#, "abc"), r("PING", "[]", "PONG")]
    );
}

#[test]
fn a_large_value_whose_syscall_s_tail_was_lost_with_its_crlf_still_completes() {
    let mut p = parser();
    let mut out = Vec::new();
    // SET big <1,000-byte value> sent in one syscall, of which the first 40 bytes were captured:
    // the rest of the value and its CRLF are the gap.
    let captured = b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$1000\r\nvvvvvvvvvvvvvvv";
    p.feed(Direction::Egress, 100, captured, &mut out).unwrap();
    p.gap(Direction::Egress, 1000 - 15 + 2);
    p.feed(Direction::Ingress, 200, b"+OK\r\n", &mut out)
        .unwrap();
    // GET big: the reply read in one syscall whose tail (value and CRLF) was lost.
    p.feed(
        Direction::Egress,
        300,
        b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n",
        &mut out,
    )
    .unwrap();
    p.feed(Direction::Ingress, 400, b"$1000\r\nvvv", &mut out)
        .unwrap();
    p.gap(Direction::Ingress, 997 + 1);
    assert_eq!(out.len(), 1, "the GET waits for its reply's last byte");
    p.gap(Direction::Ingress, 1);
    p.feed(Direction::Egress, 500, b"*1\r\n$4\r\nPING\r\n", &mut out)
        .unwrap();
    p.feed(Direction::Ingress, 600, b"+PONG\r\n", &mut out)
        .unwrap();
    let summary: Vec<(String, String)> = rows(&out)
        .into_iter()
        .map(|(cmd, _, resp)| (cmd, resp))
        .collect();
    assert_eq!(
        summary,
        [
            ("SET".to_string(), "OK".to_string()),
            ("GET".to_string(), "vvv".to_string()),
            ("PING".to_string(), "PONG".to_string()),
        ]
    );
    assert_eq!(out[1].latency_ns, Some(400 - 300));
}

#[test]
fn resp3_attributes_are_dropped_and_types_rendered() {
    let mut p = parser();
    let mut out = Vec::new();
    let command = b"*1\r\n$4\r\nPING\r\n";
    p.feed(Direction::Egress, 100, &command.repeat(7), &mut out)
        .unwrap();
    let replies: &[u8] = b"|1\r\n+ttl\r\n:3\r\n:5\r\n=15\r\ntxt:Some string\r\n,3.14\r\n#t\r\n(3492890328409238509324850943850943825024385\r\n*-1\r\n!9\r\nERR oops!\r\n";
    p.feed(Direction::Ingress, 200, replies, &mut out).unwrap();
    let resps: Vec<String> = rows(&out).into_iter().map(|(_, _, resp)| resp).collect();
    assert_eq!(
        resps,
        [
            "5",
            "Some string",
            "3.14",
            "true",
            "3492890328409238509324850943850943825024385",
            "<NULL>",
            "-ERR oops!"
        ]
    );
}

#[test]
fn a_command_without_reply_expires_unanswered() {
    let mut p = parser();
    let mut out = Vec::new();
    p.feed(
        Direction::Egress,
        100,
        b"*2\r\n$5\r\nBLPOP\r\n$1\r\nq\r\n",
        &mut out,
    )
    .unwrap();
    p.expire(100, &mut out);
    assert!(out.is_empty());
    p.expire(101, &mut out);
    assert_eq!(rows(&out), [r("BLPOP", r#"["q"]"#, "")]);
    assert_eq!(out[0].latency_ns, None);
}

#[test]
fn a_command_without_reply_at_the_close_ended_with_it_but_a_quit_or_lost_replies_did_not() {
    let get = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
    let mut p = parser();
    let mut out = Vec::new();
    p.feed(Direction::Egress, 100, get, &mut out).unwrap();
    p.expire(101, &mut out);
    assert_eq!(out[0].unanswered(), Some(Unanswered::Timeout));
    p.feed(Direction::Egress, 200, get, &mut out).unwrap();
    p.feed(Direction::Egress, 300, b"*1\r\n$4\r\nQUIT\r\n", &mut out)
        .unwrap();
    p.expire(u64::MAX, &mut out);
    let ends: Vec<_> = out.iter().map(|r| r.unanswered()).collect();
    assert_eq!(
        ends,
        [Some(Unanswered::Timeout), Some(Unanswered::Closed), None]
    );

    // A blocking pop past the timeout waits as told; the close ends it.
    let mut p = parser();
    let mut out = Vec::new();
    let blpop = b"*3\r\n$5\r\nBLPOP\r\n$1\r\nq\r\n$1\r\n0\r\n";
    p.feed(Direction::Egress, 100, blpop, &mut out).unwrap();
    p.feed(Direction::Egress, 200, blpop, &mut out).unwrap();
    p.expire(101, &mut out);
    p.expire(u64::MAX, &mut out);
    let ends: Vec<_> = out.iter().map(|r| r.unanswered()).collect();
    assert_eq!(ends, [None, Some(Unanswered::Closed)]);

    // Replies lost mid-frame: the replies are not followed at the close.
    let mut p = parser();
    let mut out = Vec::new();
    p.feed(Direction::Egress, 100, get, &mut out).unwrap();
    p.feed(Direction::Ingress, 150, b"*3\r\n:1\r\n", &mut out)
        .unwrap();
    p.gap(Direction::Ingress, 30);
    p.feed(Direction::Egress, 200, get, &mut out).unwrap();
    p.expire(u64::MAX, &mut out);
    assert!(!out.is_empty());
    assert!(out.iter().all(|r| r.unanswered().is_none()), "{out:?}");
}

#[test]
fn passwords_in_auth_and_hello_are_redacted_and_usernames_shown() {
    let mut p = parser();
    let mut out = Vec::new();
    let hello = b"*5\r\n$5\r\nHELLO\r\n$1\r\n3\r\n$4\r\nAUTH\r\n$3\r\nbob\r\n$6\r\nsecret\r\n";
    let auth = b"*3\r\n$4\r\nauth\r\n$3\r\nbob\r\n$6\r\nsecret\r\n";
    let auth_password = b"*2\r\n$4\r\nAUTH\r\n$6\r\nsecret\r\n";
    let migrate = b"*10\r\n$7\r\nMIGRATE\r\n$4\r\nhost\r\n$4\r\n6379\r\n$1\r\nk\r\n$1\r\n0\r\n$4\r\n5000\r\n$5\r\nAUTH2\r\n$3\r\nbob\r\n$6\r\nsecret\r\n$4\r\nKEYS\r\n";
    for (ts, command) in [&hello[..], auth, auth_password, migrate]
        .into_iter()
        .enumerate()
    {
        p.feed(Direction::Egress, 100 + ts as u64, command, &mut out)
            .unwrap();
    }
    p.expire(u64::MAX, &mut out);
    let args: Vec<&Field> = out.iter().map(|r| &r.fields[1]).collect();
    assert_eq!(
        args,
        [
            &Field::String(r#"["3","AUTH","bob","<redacted>"]"#.into()),
            &Field::String(r#"["bob","<redacted>"]"#.into()),
            &Field::String(r#"["<redacted>"]"#.into()),
            &Field::String(
                r#"["host","6379","k","0","5000","AUTH2","bob","<redacted>","KEYS"]"#.into()
            ),
        ]
    );
}

#[test]
fn passwords_set_by_config_set_are_redacted() {
    let mut p = parser();
    let mut out = Vec::new();
    let config = b"*6\r\n$6\r\nCONFIG\r\n$3\r\nSET\r\n$17\r\ntls-key-file-pass\r\n$2\r\npw\r\n$7\r\nmaxconn\r\n$2\r\n10\r\n";
    p.feed(Direction::Egress, 100, config, &mut out).unwrap();
    p.expire(u64::MAX, &mut out);
    assert_eq!(
        out[0].fields[1],
        Field::String(r#"["tls-key-file-pass","<redacted>","maxconn","10"]"#.into())
    );
}

#[test]
fn tokens_in_values_and_replies_are_redacted_under_any_key() {
    use crate::secret::tests::{JWT, github_token};
    let token = github_token();
    let bulk = |s: &str| format!("${}\r\n{s}\r\n", s.len());
    let set = format!(
        "*3\r\n$3\r\nSET\r\n$9\r\nsession:1\r\n{}",
        bulk(&format!("{{\"user\":7,\"jwt\":\"{JWT}\"}}"))
    );
    let get = "*2\r\n$3\r\nGET\r\n$5\r\ncfg:1\r\n";
    for redact in [true, false] {
        let mut p = Parser::new(
            Role::Client,
            &ParseConfig {
                redact,
                ..ParseConfig::default()
            },
        );
        let mut out = Vec::new();
        p.feed(Direction::Egress, 100, set.as_bytes(), &mut out)
            .unwrap();
        p.feed(Direction::Ingress, 110, b"+OK\r\n", &mut out)
            .unwrap();
        p.feed(Direction::Egress, 200, get.as_bytes(), &mut out)
            .unwrap();
        p.feed(
            Direction::Ingress,
            210,
            bulk(&format!("github={token}")).as_bytes(),
            &mut out,
        )
        .unwrap();
        let (jwt, github) = if redact {
            ("<redacted>", "<redacted>")
        } else {
            (JWT, token.as_str())
        };
        assert_eq!(
            rows(&out),
            [
                r(
                    "SET",
                    &format!(r#"["session:1","{{\"user\":7,\"jwt\":\"{jwt}\"}}"]"#),
                    "OK"
                ),
                r("GET", r#"["cfg:1"]"#, &format!("github={github}")),
            ],
            "redact={redact}"
        );
    }
}

#[test]
fn a_value_cut_at_the_body_limit_inside_a_token_is_redacted() {
    let token = crate::secret::tests::github_token();
    let set = format!(
        "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${}\r\n{token}\r\n",
        token.len()
    );
    let mut p = Parser::new(
        Role::Client,
        &ParseConfig {
            max_body_bytes: 20,
            redact: true,
        },
    );
    let mut out = Vec::new();
    p.feed(Direction::Egress, 100, set.as_bytes(), &mut out)
        .unwrap();
    p.expire(u64::MAX, &mut out);
    assert_eq!(
        out[0].fields[1],
        Field::String(r#"["k","<redacted>"]"#.into())
    );
}

#[test]
fn a_huge_declared_array_is_counted_not_stored() {
    let mut p = parser();
    let mut out = Vec::new();
    p.feed(Direction::Egress, 100, b"*1\r\n$4\r\nKEYS\r\n", &mut out)
        .unwrap();
    p.feed(Direction::Ingress, 200, b"*1000000000\r\n", &mut out)
        .unwrap();
    p.feed(Direction::Ingress, 201, &b"+k\r\n".repeat(1000), &mut out)
        .unwrap();
    assert!(out.is_empty());
    p.expire(u64::MAX, &mut out);
    assert_eq!(rows(&out), [r("KEYS", "[]", "")]);
}

#[test]
fn a_client_tracking_push_between_replies_does_not_shift_pairing() {
    let mut p = parser();
    let mut out = Vec::new();
    p.feed(
        Direction::Egress,
        100,
        b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
        &mut out,
    )
    .unwrap();
    p.feed(
        Direction::Ingress,
        200,
        b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n$1\r\nv\r\n",
        &mut out,
    )
    .unwrap();
    assert_eq!(
        rows(&out),
        [
            r("PUSH INVALIDATE", "", r#"["invalidate",["k"]]"#),
            r("GET", r#"["k"]"#, "v")
        ]
    );
}

#[test]
fn garbage_from_a_client_is_an_error_and_the_next_command_parses() {
    let mut p = parser();
    let mut out = Vec::new();
    let err = p
        .feed(
            Direction::Egress,
            100,
            b"\x00\x01\x02\r\n*1\r\n$4\r\nPING\r\n",
            &mut out,
        )
        .unwrap_err();
    assert_eq!(err.reason, "bad_type");
    p.feed(Direction::Ingress, 200, b"+PONG\r\n", &mut out)
        .unwrap();
    assert_eq!(rows(&out), [r("PING", "[]", "PONG")]);
}

#[test]
fn arguments_beyond_the_kept_items_are_summarised_at_the_end_of_the_json_array() {
    let mut p = parser();
    let mut out = Vec::new();
    let mut command = b"*300\r\n$3\r\nDEL\r\n".to_vec();
    for i in 1..300 {
        let key = format!("k{i}");
        command.extend_from_slice(format!("${}\r\n{key}\r\n", key.len()).as_bytes());
    }
    p.feed(Direction::Egress, 100, &command, &mut out).unwrap();
    p.feed(Direction::Ingress, 200, b":299\r\n", &mut out)
        .unwrap();
    let Field::String(args) = &out[0].fields[1] else {
        panic!("{:?}", out[0].fields)
    };
    let list: Vec<String> = serde_json::from_str(args).unwrap();
    assert_eq!(list.len(), 256, "{args}");
    assert_eq!(list[0], "k1");
    assert_eq!(list[254], "k255");
    assert_eq!(list[255], "<44 more>");
}

/// A server reading a long pipeline in reads larger than what is captured of one (Redis reads as
/// much as its query buffer holds): commands in the middle of each read are never seen, and the
/// replies to them come before those of the commands seen next.
#[test]
fn commands_lost_in_a_pipeline_never_get_another_command_s_reply() {
    let mut p = Parser::new(Role::Server, &ParseConfig::default());
    let mut out = Vec::new();
    let get = |i: usize| format!("*2\r\n$3\r\nGET\r\n$5\r\nk{i:04}\r\n").into_bytes();
    let value = |i: usize| format!("$5\r\nv{i:04}\r\n").into_bytes();
    let commands: Vec<u8> = (0..3000).flat_map(get).collect();
    const READ: usize = 20_000;
    let mut answered = 0;
    for (k, read) in commands.chunks(READ).enumerate() {
        let ts = 10 + 2 * k as u64;
        crate::captured::feed_reads(&mut p, Direction::Ingress, ts, read, READ, &mut out);
        // The server answers every command complete so far, in one write.
        let complete = (k * READ + read.len()) / get(0).len();
        let replies: Vec<u8> = (answered..complete).flat_map(value).collect();
        p.feed(Direction::Egress, ts + 1, &replies, &mut out)
            .unwrap();
        answered = complete;
    }
    p.feed(Direction::Ingress, 100, b"*1\r\n$4\r\nPING\r\n", &mut out)
        .unwrap();
    p.feed(Direction::Egress, 101, b"+PONG\r\n", &mut out)
        .unwrap();
    // Two ticks after the one that saw the last frames: quiet, every command has its reply, the
    // waiting ones the last replies.
    for _ in 0..3 {
        p.expire(0, &mut out);
    }
    let got = rows(&out);
    let mut right = 0;
    for (cmd, args, resp) in &got {
        if cmd == "GET" && !resp.is_empty() {
            assert_eq!(resp[1..], args[3..7], "{args} answered {resp}");
            right += 1;
        }
    }
    // The 512 commands before the first loss, and all those after the last one: the 21 whole
    // ones in the third read's captured tail, the 500 of the last read.
    assert_eq!(right, 512 + 21 + 500, "{got:?}");
    assert_eq!(got.last(), Some(&r("PING", "[]", "PONG")));
    // Back in step: the next command pairs at once.
    p.feed(Direction::Ingress, 200, &get(7), &mut out).unwrap();
    p.feed(Direction::Egress, 201, &value(7), &mut out).unwrap();
    assert_eq!(rows(&out).last(), Some(&r("GET", r#"["k0007"]"#, "v0007")));
}

#[test]
fn at_a_close_after_commands_were_lost_the_waiting_ones_are_unanswered() {
    // A client that went away may leave commands unanswered: the last replies need not be theirs.
    let mut p = Parser::new(Role::Server, &ParseConfig::default());
    let mut out = Vec::new();
    p.feed(Direction::Ingress, 1, b"*1\r\n$4\r\nPING\r\n", &mut out)
        .unwrap();
    p.gap(Direction::Ingress, 100);
    p.feed(
        Direction::Ingress,
        1,
        b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n",
        &mut out,
    )
    .unwrap();
    p.feed(Direction::Egress, 2, b"+PONG\r\n$1\r\nx\r\n", &mut out)
        .unwrap();
    p.expire(u64::MAX, &mut out);
    assert_eq!(
        rows(&out),
        [r("PING", "[]", "PONG"), r("GET", r#"["a"]"#, "")]
    );
}
