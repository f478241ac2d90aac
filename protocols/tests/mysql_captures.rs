//! MySQL parser on conversations captured from the mariadb client and mysql-connector-python
//! against MariaDB (tests/fixtures/mysql/capture.sh).
mod replay;

use sonde_protocols::{Field, Kind, Record, Transport};

fn column<'a>(rec: &'a Record, name: &str) -> &'a Field {
    let i = Kind::Mysql
        .columns()
        .iter()
        .position(|c| c.name == name)
        .unwrap();
    &rec.fields[i]
}

fn text<'a>(rec: &'a Record, name: &str) -> &'a str {
    match column(rec, name) {
        Field::String(s) => s,
        other => panic!("{name} is {other:?}"),
    }
}

fn find<'a>(records: &'a [Record], body: &str) -> &'a Record {
    records
        .iter()
        .find(|r| matches!(column(r, "req_body"), Field::String(s) if s == body))
        .unwrap_or_else(|| panic!("no record for {body}"))
}

#[test]
fn mariadb_client_queries_errors_and_quit_become_records() {
    let r = replay::check_case(Kind::Mysql, Transport::Tcp, "mysql", "mariadb_cli");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let select = find(&r.records, "SELECT id, name FROM t ORDER BY id");
    assert_eq!(text(select, "resp_status"), "OK");
    assert_eq!(text(select, "resp_body"), "Resultset rows = 2");
    assert_eq!(column(select, "rows"), &Field::Int64(2));
    let missing = find(&r.records, "SELECT * FROM nope");
    assert_eq!(text(missing, "resp_status"), "ERR");
    assert_eq!(
        text(missing, "resp_body"),
        "1146 (42S02): Table 'sonde.nope' doesn't exist"
    );
    let last = r.records.last().unwrap();
    assert_eq!(text(last, "req_cmd"), "COM_QUIT");
    assert_eq!(last.latency_ns, None);
    assert!(
        r.records[..r.records.len() - 1]
            .iter()
            .all(|rec| rec.latency_ns.is_some())
    );
}

#[test]
fn connector_prepared_statements_show_text_and_params() {
    let r = replay::check_case(Kind::Mysql, Transport::Tcp, "mysql", "connector_prepared");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let executes: Vec<_> = r
        .records
        .iter()
        .filter(|rec| text(rec, "req_cmd") == "COM_STMT_EXECUTE")
        .collect();
    let insert = executes
        .iter()
        .find(|rec| text(rec, "req_body") == "INSERT INTO u VALUES (?, ?)")
        .expect("execute of the INSERT");
    assert_eq!(text(insert, "params"), "7, 'seven'");
    let select = executes
        .iter()
        .find(|rec| text(rec, "req_body") == "SELECT id, name FROM u WHERE id = ?")
        .expect("execute of the SELECT");
    assert_eq!(column(select, "rows"), &Field::Int64(1));
    let failed = r
        .records
        .iter()
        .find(|rec| text(rec, "req_cmd") == "COM_STMT_PREPARE" && text(rec, "resp_status") == "ERR")
        .expect("failed prepare");
    assert!(text(failed, "resp_body").starts_with("1146 (42S02)"));
    assert!(!replay::render(Kind::Mysql, &r).contains("sonde-secret"));
}

#[test]
fn go_sql_driver_results_without_their_column_definitions_count_their_rows() {
    // MariaDB leaves out the column definitions the driver already has (from the prepare's
    // answer): every execute's result set is a count, a 0 saying none follow, rows and the end.
    let r = replay::check_case(Kind::Mysql, Transport::Tcp, "mysql", "go_sql_driver");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let select = "SELECT id, name FROM items WHERE id <= ? ORDER BY id";
    let executes: Vec<(&str, &Field)> = r
        .records
        .iter()
        .filter(|rec| text(rec, "req_cmd") == "COM_STMT_EXECUTE" && text(rec, "req_body") == select)
        .map(|rec| (text(rec, "params"), column(rec, "rows")))
        .collect();
    assert_eq!(
        executes,
        [
            ("3", &Field::Int64(3)),
            ("0", &Field::Int64(0)),
            ("1", &Field::Int64(1)),
            ("2", &Field::Int64(2)),
        ]
    );
    let insert = r
        .records
        .iter()
        .find(|rec| {
            text(rec, "req_cmd") == "COM_STMT_EXECUTE"
                && text(rec, "req_body")
                    == "INSERT INTO items (id, name, password) VALUES (?, ?, ?)"
        })
        .expect("execute of the INSERT");
    assert_eq!(text(insert, "params"), "1, 'a', <redacted>");
    // The text query after them: its definitions are sent (a 1 after the count).
    let last = find(&r.records, "SELECT name FROM items WHERE id = 3");
    assert_eq!(column(last, "rows"), &Field::Int64(1));
    assert!(!replay::render(Kind::Mysql, &r).contains("hunter2"));
}

#[test]
fn pymysql_load_data_local_is_answered_after_its_file_and_multi_results_are_one_record() {
    let r = replay::check_case(Kind::Mysql, Transport::Tcp, "mysql", "pymysql_app");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let loads: Vec<&Record> = r
        .records
        .iter()
        .filter(|rec| {
            matches!(column(rec, "req_body"), Field::String(s) if s.starts_with("LOAD DATA LOCAL"))
        })
        .collect();
    // What PyMySQL printed: 3000 rows loaded, then none (the same names again, skipped).
    let answers: Vec<&str> = loads.iter().map(|rec| text(rec, "resp_body")).collect();
    assert_eq!(
        answers,
        [
            "Records: 3000  Deleted: 0  Skipped: 0  Warnings: 0",
            "Records: 3000  Deleted: 0  Skipped: 3000  Warnings: 3000",
        ]
    );
    // The file's 45 KB were sent within each statement's time, and none of it is a command.
    let cmds: Vec<&str> = r.records.iter().map(|rec| text(rec, "req_cmd")).collect();
    assert!(
        cmds.iter()
            .all(|c| ["COM_CONNECT", "COM_QUERY", "COM_QUIT"].contains(c)),
        "{cmds:?}"
    );
    assert_eq!(r.records.len(), 13, "{}", replay::render(Kind::Mysql, &r));
    let both = find(&r.records, "SELECT 1; SELECT 2, 3");
    assert_eq!(column(both, "rows"), &Field::Int64(2));
    let call = find(&r.records, "CALL two_sets()");
    assert_eq!(column(call, "rows"), &Field::Int64(4));
    assert!(!replay::render(Kind::Mysql, &r).contains("sonde-secret"));
}
