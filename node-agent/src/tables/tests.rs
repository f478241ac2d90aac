use super::*;
use crate::telemetry::TableMetrics;

fn cols() -> Vec<Column> {
    vec![
        Column::new("comm", ColumnType::String),
        Column::new("bytes", ColumnType::UInt64),
    ]
}

fn row(t: i64, comm: &str) -> Row {
    Row {
        time_ns: t,
        namespace: String::new(),
        pod: String::new(),
        container: String::new(),
        pid: 42,
        values: vec![Value::String(comm.into()), Value::UInt64(t as u64)],
    }
}

fn store(per_table: usize, total: usize) -> (Store, TableMetrics) {
    let metrics = TableMetrics::default();
    (
        Store::new(
            "node-a".into(),
            Budget { per_table, total },
            metrics.clone(),
        ),
        metrics,
    )
}

fn labels(t: &str) -> crate::telemetry::TableLabels {
    crate::telemetry::TableLabels { table: t.into() }
}

#[test]
fn tables_start_with_the_target_columns_then_the_probe_columns() {
    let (s, _) = store(1 << 20, 1 << 20);
    s.create("opens", "BpftraceScript/opens", cols()).unwrap();
    let names: Vec<String> = s.list()[0].columns.iter().map(|c| c.name.clone()).collect();
    assert_eq!(
        names,
        [
            "time_",
            "node",
            "namespace",
            "pod",
            "container",
            "pid",
            "comm",
            "bytes"
        ]
    );
}

#[test]
fn a_table_over_its_budget_evicts_its_oldest_rows_and_counts_them() {
    let one = row_size(&row(0, "cat"));
    let (s, metrics) = store(one * 10, 1 << 30);
    let w = s.create("t", "o", cols()).unwrap();
    for t in 0..25 {
        w.append(row(t, "cat"));
    }
    let info = &s.list()[0];
    assert_eq!(info.rows, 10);
    assert_eq!(info.evicted_rows, 15);
    assert!(info.bytes <= one * 10);
    assert_eq!(metrics.evicted.get_or_create(&labels("t")).get(), 15);
    assert_eq!(metrics.rows.get_or_create(&labels("t")).get(), 10);
    let all = s
        .query(
            "t",
            &Query {
                limit: 100,
                since_ns: None,
            },
        )
        .unwrap();
    assert_eq!(
        all.rows.first().unwrap().time_ns,
        15,
        "the oldest rows went first"
    );
}

#[test]
fn the_total_budget_evicts_from_the_largest_table() {
    let one = row_size(&row(0, "cat"));
    let (s, _) = store(1 << 30, one * 12);
    let big = s.create("big", "o", cols()).unwrap();
    let small = s.create("small", "o", cols()).unwrap();
    for t in 0..3 {
        small.append(row(t, "cat"));
    }
    for t in 0..20 {
        big.append(row(t, "cat"));
    }
    assert!(s.total_bytes() <= one * 12);
    let list = s.list();
    assert_eq!(list.iter().find(|t| t.name == "small").unwrap().rows, 3);
    assert_eq!(list.iter().find(|t| t.name == "big").unwrap().rows, 9);
}

#[test]
fn rows_of_the_wrong_width_are_rejected_and_counted() {
    let (s, metrics) = store(1 << 20, 1 << 20);
    let w = s.create("t", "o", cols()).unwrap();
    let mut bad = row(1, "cat");
    bad.values.pop();
    w.append(bad);
    w.append(row(2, "cat"));
    let info = &s.list()[0];
    assert_eq!((info.rows, info.rejected_rows), (1, 1));
    assert_eq!(metrics.rejected.get_or_create(&labels("t")).get(), 1);
}

#[test]
fn a_batch_of_rows_is_appended_in_order_with_bad_rows_rejected_and_the_oldest_evicted() {
    let one = row_size(&row(0, "cat"));
    let (s, metrics) = store(one * 10, 1 << 30);
    let w = s.create("t", "o", cols()).unwrap();
    let mut batch: Vec<Row> = (0..25).map(|t| row(t, "cat")).collect();
    batch[3].values.pop();
    w.append_all(batch);
    let info = &s.list()[0];
    assert_eq!(
        (info.rows, info.evicted_rows, info.rejected_rows),
        (10, 14, 1)
    );
    assert!(info.bytes <= one * 10);
    assert_eq!(s.total_bytes(), info.bytes);
    assert_eq!(metrics.rows.get_or_create(&labels("t")).get(), 10);
    assert_eq!(metrics.evicted.get_or_create(&labels("t")).get(), 14);
    assert_eq!(metrics.rejected.get_or_create(&labels("t")).get(), 1);
    let all = s
        .query(
            "t",
            &Query {
                limit: 100,
                since_ns: None,
            },
        )
        .unwrap();
    let times: Vec<i64> = all.rows.iter().map(|r| r.time_ns).collect();
    assert_eq!(times, (15..25).collect::<Vec<i64>>());
}

#[test]
fn creating_a_table_again_with_the_same_columns_shares_its_rows() {
    let (s, _) = store(1 << 20, 1 << 20);
    s.create("t", "first", cols()).unwrap().append(row(1, "a"));
    let again = s.create("t", "second", cols()).unwrap();
    again.append(row(2, "b"));
    assert_eq!(s.query("t", &Query::default()).unwrap().rows.len(), 2);
}

#[test]
fn creating_a_table_with_other_columns_names_the_table_both_owners_and_the_fix() {
    let (s, _) = store(1 << 20, 1 << 20);
    s.create("t", "BpftraceScript/a", cols()).unwrap();
    let err = s
        .create("t", "BpftraceScript/b", vec![])
        .unwrap_err()
        .to_string();
    for part in [
        "table t",
        "BpftraceScript/a",
        "BpftraceScript/b",
        "choose another tableName",
    ] {
        assert!(err.contains(part), "{part} missing from: {err}");
    }
}

#[test]
fn limit_returns_the_newest_rows_oldest_first_and_since_filters_older_ones() {
    let (s, _) = store(1 << 20, 1 << 20);
    let w = s.create("t", "o", cols()).unwrap();
    for t in 0..10 {
        w.append(row(t, "x"));
    }
    let times = |q: Query| -> Vec<i64> {
        s.query("t", &q)
            .unwrap()
            .rows
            .iter()
            .map(|r| r.time_ns)
            .collect()
    };
    assert_eq!(
        times(Query {
            limit: 3,
            since_ns: None
        }),
        [7, 8, 9]
    );
    assert_eq!(
        times(Query {
            limit: 100,
            since_ns: Some(8)
        }),
        [8, 9]
    );
    assert_eq!(
        times(Query {
            limit: 1,
            since_ns: Some(2)
        }),
        [9]
    );
}

/// What a reader granted one namespace gets: its rows only, the limit counting those.
#[test]
fn a_query_in_a_namespace_returns_its_newest_rows_only() {
    let (s, _) = store(1 << 20, 1 << 20);
    let w = s.create("t", "o", cols()).unwrap();
    for t in 0..10 {
        let mut r = row(t, "x");
        r.namespace = if t % 3 == 0 { "team-a" } else { "team-b" }.into();
        w.append(r);
    }
    let q = Query {
        limit: 2,
        since_ns: None,
    };
    let got = |ns| -> Vec<(i64, String)> {
        s.query_in("t", &q, ns)
            .unwrap()
            .rows
            .into_iter()
            .map(|r| (r.time_ns, r.namespace))
            .collect()
    };
    assert_eq!(
        got(Some("team-a")),
        [(6, "team-a".to_owned()), (9, "team-a".to_owned())]
    );
    assert_eq!(got(Some("team-c")), []);
    assert_eq!(got(None).len(), 2);
}

#[test]
fn unknown_tables_say_how_to_list_tables() {
    let (s, _) = store(1 << 20, 1 << 20);
    let err = s.query("nope", &Query::default()).unwrap_err().to_string();
    assert!(err.contains("nope") && err.contains("/v1/tables"), "{err}");
}

#[test]
fn since_accepts_nanoseconds_and_rfc3339_and_names_bad_values() {
    assert_eq!(
        parse_since("1767225600000000000"),
        Ok(1_767_225_600_000_000_000)
    );
    assert_eq!(
        parse_since("2026-01-01T00:00:00Z"),
        Ok(1_767_225_600_000_000_000)
    );
    let err = parse_since("yesterday").unwrap_err().to_string();
    assert!(
        err.contains("since=yesterday") && err.contains("RFC 3339"),
        "{err}"
    );
}

#[test]
fn bad_limit_and_format_name_the_parameter_and_what_is_accepted() {
    let e = Query::parse(Some("0"), None, None).unwrap_err().to_string();
    assert!(e.contains("limit=0") && e.contains("100000"), "{e}");
    let e = Query::parse(Some("100001"), None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("limit=100001"), "{e}");
    let e = Query::parse(None, None, Some("xml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("format=xml") && e.contains("csv"), "{e}");
    assert_eq!(
        Query::parse(None, None, None).unwrap(),
        (Query::default(), Format::Json)
    );
}

fn sample() -> QueryResult {
    let (s, _) = store(1 << 20, 1 << 20);
    let w = s.create("t", "o", cols()).unwrap();
    w.append(row(5, "say \"hi\", then\nleave"));
    w.append(row(6, "cat"));
    s.query("t", &Query::default()).unwrap()
}

#[test]
fn json_is_an_array_of_objects_keyed_by_column_in_column_order() {
    let body = String::from_utf8(encode(&sample(), Format::Json)).unwrap();
    assert!(
        body.starts_with(r#"[{"time_":5,"node":"node-a","namespace":"","pod":"","container":"","pid":42,"comm":"say \"hi\", then\nleave","bytes":5},"#),
        "{body}"
    );
    let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(parsed.as_array().unwrap().len(), 2);
}

#[test]
fn ndjson_has_one_object_per_line() {
    let body = String::from_utf8(encode(&sample(), Format::Ndjson)).unwrap();
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 2);
    let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(second["comm"], "cat");
}

#[test]
fn csv_has_a_header_and_quotes_fields_per_rfc4180() {
    let body = String::from_utf8(encode(&sample(), Format::Csv)).unwrap();
    assert_eq!(
        body,
        "time_,node,namespace,pod,container,pid,comm,bytes\n\
         5,node-a,,,,42,\"say \"\"hi\"\", then\nleave\",5\n\
         6,node-a,,,,42,cat,6\n"
    );
}

#[test]
fn a_rendered_column_is_stored_as_written_and_read_rendered_every_time() {
    fn shout(stored: &str) -> String {
        stored.to_uppercase()
    }
    let (s, _) = store(1 << 20, 1 << 20);
    let columns = vec![
        Column {
            render: Some(Renderer {
                name: "upper",
                render: shout,
            }),
            ..Column::new("comm", ColumnType::String)
        },
        Column::new("bytes", ColumnType::UInt64),
    ];
    let w = s.create("t", "o", columns).unwrap();
    w.append(row(1, "cat"));
    let query = Query {
        limit: 10,
        since_ns: None,
    };
    for _ in 0..2 {
        let rows = s.query("t", &query).unwrap().rows;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].values[0], Value::String("CAT".into()));
        assert_eq!(rows[0].values[1], Value::UInt64(1));
    }
}

/// A full table holds no more memory than its budget: its ring is grown to the budget at most, not
/// doubled past it (all of it resident as the ring turns), and rows are evicted before a batch
/// comes in, not after.
#[test]
fn a_full_table_s_ring_never_outgrows_its_budget() {
    let budget = 1_000_000;
    let (s, _) = store(budget, 1 << 30);
    let w = s.create("t", "o", cols()).unwrap();
    for batch in 0..300 {
        w.append_all((0..100).map(|i| row(batch * 100 + i, "a value of a few dozen bytes")));
        let data = lock(&w.table.data);
        assert!(data.bytes <= budget);
        assert!(
            data.rows.capacity() <= budget,
            "batch {batch}: {} bytes of room for a budget of {budget}",
            data.rows.capacity()
        );
    }
    assert!(s.list()[0].evicted_rows > 0);
}

#[test]
fn a_table_no_probe_writes_to_is_retired_after_the_ttl_with_its_rows_and_series() {
    let (s, metrics) = store(1 << 20, 1 << 20);
    let ttl = Duration::from_secs(3600);
    let t0 = Instant::now();
    let gone = s
        .create("gone", "BpftraceScript/old", cols())
        .expect("create");
    gone.append(row(1, "a"));
    drop(gone);
    let live = s
        .create("live", "BpftraceScript/new", cols())
        .expect("create");
    live.append(row(2, "b"));
    let held = s.total_bytes();
    // The first look starts the time; within the TTL nothing goes.
    assert!(s.retire_orphans(t0, ttl).is_empty());
    assert!(s.retire_orphans(t0 + ttl / 2, ttl).is_empty());
    assert_eq!(
        s.retire_orphans(t0 + ttl, ttl),
        ["gone"],
        "the table without a writer for the TTL"
    );
    let names: Vec<String> = s.list().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["live"]);
    assert!(s.total_bytes() < held, "its rows no longer count");
    assert!(metrics.rows.get(&labels("gone")).is_none());
    assert!(metrics.rows.get(&labels("live")).is_some());
    assert_eq!(metrics.retired.get(), 1);
    // The table with a writer stays however long.
    assert!(s.retire_orphans(t0 + ttl * 10, ttl).is_empty());
    drop(live);
    // A probe back before the TTL ends keeps the table, its time starts anew.
    assert!(s.retire_orphans(t0 + ttl * 11, ttl).is_empty());
    let again = s
        .create("live", "BpftraceScript/new", cols())
        .expect("create");
    assert!(s.retire_orphans(t0 + ttl * 12, ttl).is_empty());
    drop(again);
    assert!(s.retire_orphans(t0 + ttl * 13, ttl).is_empty());
    assert_eq!(s.retire_orphans(t0 + ttl * 14, ttl), ["live"]);
}
