//! Every node's tables through the operator: two cluster agents (node-a on 127.0.0.2, node-b on
//! 127.0.0.3, one port as the DaemonSet's pods have on their pod IPs) trace an nginx each in a
//! fake pod; the operator started with `--query-listen` finds them by their Pods' labels and IPs
//! (patched into the Pods' status as a kubelet would) and answers `/v1/tables` and
//! `/v1/tables/http_events` with the rows of both, merged oldest first, in every format; the
//! agents' own refusals reach the caller, `?namespace=` and `?node=` are passed on, and a stopped
//! agent is named in `Sonde-Failed-Nodes` while the other's rows still come. A profiler Tracepoint
//! over a CPU-bound pod per node (busy-a, busy-b) makes the operator's `/v1/profiles/pprof` and
//! `/v1/profiles/flamegraph.svg` one profile of both nodes' samples.
//!
//! Needs what `protocols` needs (root, etcd, kube-apiserver, helm from `scripts/setup e2e`, nginx
//! and curl from `scripts/setup peers`), cc, and the loopback addresses 127.0.0.2 and 127.0.0.3
//! (all of 127/8 answers on Linux).
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use prost::Message;
use serde_json::Value;
use sonde_api::{ProbeState, Tracepoint};
use sonde_e2e::cluster::{Cluster, Install, TEST_NAMESPACE};
use sonde_e2e::expect::{self, HttpServerRows};
use sonde_e2e::fake_pod::{self, FakePod, PodSpec};
use sonde_e2e::single_node::lock;
use sonde_e2e::sonde::{Agent, AgentOptions, Operator};
use sonde_e2e::suite::{self, Environment, Scenario};
use sonde_e2e::wait::{self, CONVERGE};
use sonde_e2e::{helm, observe, peers, ports, tools};
use sonde_profile::pprof::Profile;

/// The fake nodes, each with its agent's address (its "pod IP").
const NODES: [(&str, Ipv4Addr); 2] = [
    ("node-a", Ipv4Addr::new(127, 0, 0, 2)),
    ("node-b", Ipv4Addr::new(127, 0, 0, 3)),
];
const PROBE_ID: &str = "Tracepoint/sonde-e2e/web-http";
/// Requests sent to each node's nginx, at `/<node>/<i>`.
const REQUESTS: usize = 3;
const TABLE: &str = "http_events";
const PROFILER_ID: &str = "Tracepoint/sonde-e2e/cpu";
/// The window of every profile asked for: longer than the whole test, so no sample leaves it
/// between two reads and a later read holds at least the samples of an earlier one.
const PROFILE_SECONDS: u64 = 3600;

const TRACEPOINT: &str = "apiVersion: sonde.dev/v1alpha1
kind: Tracepoint
metadata:
  name: web-http
  namespace: sonde-e2e
spec:
  selector:
    matchLabels: {app: web}
  probe:
    protocols: [http]
";

struct Env {
    // Drop order = field order: Sonde's processes, then the fake pods, then the control plane,
    // then the runtime and the directory.
    operator: Mutex<Option<Operator>>,
    agents: Mutex<BTreeMap<String, Agent>>,
    pods: Mutex<Vec<FakePod>>,
    cluster: Cluster,
    /// Each node's agent URL (kept after the agent is stopped) and its nginx's port.
    nodes: BTreeMap<String, (String, u16)>,
    /// `http://127.0.0.1:<--query-listen port>`.
    query_url: String,
    /// The CPU-bound fixture the busy pods run.
    hot: PathBuf,
    logs: PathBuf,
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
}

impl Environment for Env {
    fn diagnostics(&self) -> String {
        let mut out = String::new();
        if let Some(op) = lock(&self.operator).as_ref() {
            out += &suite::log_section("operator", op.proc.log_path(), 40);
        }
        for (node, agent) in lock(&self.agents).iter() {
            out += &suite::log_section(&format!("agent {node}"), agent.proc.log_path(), 30);
        }
        out
    }
}

fn setup() -> Result<Env> {
    let bins = tools::build_sonde()?;
    let nginx = peers::nginx()?;
    let rt = tokio::runtime::Runtime::new()?;
    let dir = suite::work_dir("sonde-e2e-cluster-query-")?;
    let hot = peers::compile_hot(dir.path())?;
    let logs = dir.path().join("logs");
    let cluster = rt.block_on(Cluster::start(dir.path(), Install { rbac: true }))?;
    let ips: Vec<IpAddr> = NODES.iter().map(|(_, ip)| IpAddr::V4(*ip)).collect();
    let agent_port = ports::free_port_on(&ips)?;
    let query_url = format!("http://127.0.0.1:{}", ports::free_port()?);
    let mut env = Env {
        operator: Mutex::new(None),
        agents: Mutex::new(BTreeMap::new()),
        pods: Mutex::new(vec![]),
        cluster,
        nodes: BTreeMap::new(),
        query_url,
        hot,
        logs,
        rt,
        dir,
    };
    for (node, ip) in NODES {
        env.rt.block_on(fake_pod::create_node(
            &env.cluster.client,
            node,
            &BTreeMap::new(),
        ))?;
        let port = ports::free_port()?;
        let conf = peers::nginx_conf(&env.dir.path().join(format!("nginx-{node}")), port)?;
        let spec = PodSpec {
            namespace: TEST_NAMESPACE.into(),
            name: format!("web-{node}"),
            node: node.into(),
            labels: BTreeMap::from([("app".to_string(), "web".to_string())]),
            container: "nginx".into(),
            command: peers::nginx_command(&nginx, &conf),
        };
        let pod = env
            .rt
            .block_on(FakePod::start(&env.cluster.client, &spec, &env.logs))?;
        lock(&env.pods).push(pod);
        env.rt.block_on(peers::wait_listening(port))?;
        let agent = start_agent(&env, node, ip, agent_port, &bins)?;
        env.nodes.insert(node.to_owned(), (agent.url.clone(), port));
        lock(&env.agents).insert(node.to_owned(), agent);
    }
    let ids = env.cluster.identities()?;
    let query_addr = env.query_url.trim_start_matches("http://").to_owned();
    *lock(&env.operator) = Some(Operator::start_with_args(
        &bins,
        &ids.operator_kubeconfig,
        "sonde-operator-0",
        &env.logs,
        &[
            format!("--query-listen={query_addr}"),
            format!("--agent-port={agent_port}"),
            // What the chart passes (templates/operator-deployment.yaml).
            format!(
                "--agent-selector=app.kubernetes.io/instance={},app.kubernetes.io/component=agent",
                helm::RELEASE
            ),
        ],
    )?);
    // Listening once it answers anything (its answers are what the scenarios check).
    let url = format!("{}/v1/tables", env.query_url);
    env.rt.block_on(wait::until_ok(
        "the operator's query listener",
        CONVERGE,
        || async { Ok(reqwest::Client::new().get(&url).send().await.map(drop)?) },
    ))?;
    trace_and_send_requests(&env)?;
    Ok(env)
}

/// Starts the agent of `node` listening on `ip:port`, with its Pod object showing that address
/// as its IP (the status a kubelet would write, patched as the admin).
fn start_agent(
    env: &Env,
    node: &str,
    ip: Ipv4Addr,
    port: u16,
    bins: &tools::SondeBinaries,
) -> Result<Agent> {
    let kubeconfig = env.cluster.agent_kubeconfig(node)?;
    let pod = format!("{}-agent-{node}", helm::RELEASE);
    let status = serde_json::json!({ "status": {
        "phase": "Running",
        "podIP": ip.to_string(),
        "podIPs": [{ "ip": ip.to_string() }],
    }});
    env.cluster
        .kubectl
        .run(
            &[
                "patch",
                "pod",
                &pod,
                "-n",
                helm::NAMESPACE,
                "--subresource=status",
                "--type=merge",
                "-p",
                &status.to_string(),
            ],
            None,
        )
        .with_context(|| format!("giving the agent Pod {pod} the IP {ip}"))?;
    let mut agent = Agent::start_cluster_with(
        bins,
        &kubeconfig,
        node,
        &env.logs,
        &AgentOptions {
            // Samples become stack_traces rows each second, not each 10 s.
            args: vec!["--profiler-period=1s".to_owned()],
            listen_ip: Some(IpAddr::V4(ip)),
            port: Some(port),
            ..AgentOptions::default()
        },
    )?;
    env.rt.block_on(agent.wait_healthy())?;
    Ok(agent)
}

/// Applies the Tracepoint, sends [`REQUESTS`] to each node's nginx once both agents attached it,
/// and waits until each agent's own table has exactly its node's rows.
fn trace_and_send_requests(env: &Env) -> Result<()> {
    let cluster = &env.cluster;
    cluster.kubectl.apply(TRACEPOINT)?;
    let api = kube::Api::<Tracepoint>::namespaced(cluster.client.clone(), TEST_NAMESPACE);
    env.rt.block_on(observe::wait_condition(
        &api, "web-http", "Ready", "True", CONVERGE,
    ))?;
    for (node, _) in NODES {
        env.rt.block_on(observe::wait_probe_state(
            &cluster.client,
            node,
            PROBE_ID,
            ProbeState::Attached,
            CONVERGE,
        ))?;
    }
    for (node, (_, port)) in &env.nodes {
        for i in 0..REQUESTS {
            peers::curl_hello(*port, &format!("/{node}/{i}"))?;
        }
    }
    let token = reader_token(env)?;
    for (node, (url, port)) in &env.nodes {
        let pod = format!("web-{node}");
        let paths = node_paths(node);
        let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
        env.rt.block_on(expect::http_paths(
            url,
            &token,
            &HttpServerRows {
                pod: &pod,
                namespace: TEST_NAMESPACE,
                local_port: *port,
                also: &[("node", node.as_str())],
            },
            &paths,
            "another pod than this node's",
            |r| r["pod"] != pod.as_str(),
        ))?;
    }
    Ok(())
}

/// The request paths sent to `node`'s nginx, sorted.
fn node_paths(node: &str) -> Vec<String> {
    (0..REQUESTS).map(|i| format!("/{node}/{i}")).collect()
}

fn reader_token(env: &Env) -> Result<String> {
    Ok(env.cluster.identities()?.reader_token.clone())
}

/// An answer of the operator's query listener, printable as failure context.
struct Answer {
    url: String,
    status: u16,
    nodes: Option<String>,
    failed: Option<String>,
    content_type: Option<String>,
    /// The body as text (a note of its size when it is not UTF-8).
    body: String,
    bytes: Vec<u8>,
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body: String = self.body.chars().take(4000).collect();
        write!(
            f,
            "GET {} -> {} (Sonde-Nodes: {:?}, Sonde-Failed-Nodes: {:?}, Content-Type: {:?})\n{body}",
            self.url, self.status, self.nodes, self.failed, self.content_type
        )
    }
}

impl Answer {
    /// The body as JSON rows.
    fn rows(&self) -> Result<Vec<Value>> {
        serde_json::from_str(&self.body).with_context(|| format!("no JSON array of rows: {self}"))
    }

    /// The body as a gzip'd pprof profile.
    fn profile(&self) -> Result<Profile> {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(self.bytes.as_slice())
            .read_to_end(&mut raw)
            .with_context(|| format!("no gzip'd body: {self}"))?;
        Profile::decode(raw.as_slice()).with_context(|| format!("no pprof profile: {self}"))
    }
}

/// GET `path` on the operator's query listener with `token` (none: no Authorization header).
fn query(env: &Env, path: &str, token: Option<&str>) -> Result<Answer> {
    get(env, &format!("{}{path}", env.query_url), token)
}

/// GET `url` with `token` (none: no Authorization header).
fn get(env: &Env, url: &str, token: Option<&str>) -> Result<Answer> {
    env.rt.block_on(async {
        let mut req = reqwest::Client::new().get(url);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.with_context(|| format!("GET {url}"))?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let (nodes, failed, content_type) = (
            header("sonde-nodes"),
            header("sonde-failed-nodes"),
            header("content-type"),
        );
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
        let body = String::from_utf8(bytes.clone())
            .unwrap_or_else(|_| format!("<{} bytes, not UTF-8>", bytes.len()));
        Ok(Answer {
            url: url.to_owned(),
            status,
            nodes,
            failed,
            content_type,
            body,
            bytes,
        })
    })
}

/// Every `http_events` row of `node`'s agent, asked directly as the table reader.
fn agent_rows(env: &Env, node: &str) -> Result<Vec<Value>> {
    let (url, _) = env.nodes.get(node).context("no such node")?;
    let token = reader_token(env)?;
    env.rt.block_on(async {
        let (code, body) =
            observe::agent_get(url, &format!("/v1/tables/{TABLE}?limit=1000"), Some(&token))
                .await?;
        ensure!(code == 200, "GET {url}/v1/tables/{TABLE}: {code} {body}");
        serde_json::from_str(&body).with_context(|| format!("rows of {node}'s agent: {body}"))
    })
}

/// Rows as comparable text (serde_json writes object keys sorted), sorted.
fn canonical(rows: &[Value]) -> Vec<String> {
    let mut rows: Vec<String> = rows.iter().map(Value::to_string).collect();
    rows.sort();
    rows
}

fn time(row: &Value) -> Result<i64> {
    row["time_"]
        .as_i64()
        .with_context(|| format!("a row without a numeric time_: {row}"))
}

/// Fails unless `times` never goes down.
fn ascending(times: &[i64], what: &dyn std::fmt::Display) -> Result<()> {
    if let Some(i) = times.windows(2).position(|w| w[0] > w[1]) {
        anyhow::bail!(
            "rows not oldest first: time_ {} before {} (row {i}); {what}",
            times[i],
            times[i + 1]
        );
    }
    Ok(())
}

/// The distinct values of `column` in `rows`.
fn column(rows: &[Value], column: &str) -> BTreeSet<String> {
    rows.iter()
        .map(|r| r[column].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Rows by node.
type NodeRows = BTreeMap<String, Vec<Value>>;

/// Every node's rows as its agent answers them, and all of them together.
fn rows_of_every_node(env: &Env) -> Result<(NodeRows, Vec<Value>)> {
    let mut by_node = BTreeMap::new();
    let mut all = Vec::new();
    for node in env.nodes.keys() {
        let rows = agent_rows(env, node)?;
        all.extend(rows.iter().cloned());
        by_node.insert(node.clone(), rows);
    }
    Ok((by_node, all))
}

/// Records of an RFC 4180 CSV text (quoted fields may hold commas, quotes and newlines).
fn csv_records(text: &str) -> Vec<Vec<String>> {
    let (mut records, mut record, mut field) = (Vec::new(), Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push(record);
    }
    records
}

fn the_rows_of_every_node_come_merged_oldest_first_in_every_format(env: &Env) -> Result<()> {
    let token = reader_token(env)?;
    let (by_node, all) = rows_of_every_node(env)?;
    let context = format!("the agents' own rows: {by_node:?}");

    let answer = query(env, &format!("/v1/tables/{TABLE}?limit=1000"), Some(&token))?;
    ensure!(answer.status == 200, "{answer}");
    ensure!(
        answer.nodes.as_deref() == Some("node-a,node-b") && answer.failed.is_none(),
        "Sonde-Nodes should be node-a,node-b with no failed node: {answer}"
    );
    let rows = answer.rows()?;
    ensure!(
        rows.len() == all.len(),
        "{} rows merged, the agents hold {}: {answer}\n{context}",
        rows.len(),
        all.len()
    );
    ensure!(
        canonical(&rows) == canonical(&all),
        "the merged rows are not the agents' rows: {answer}\n{context}"
    );
    let times = rows.iter().map(time).collect::<Result<Vec<_>>>()?;
    ascending(&times, &answer)?;
    ensure!(
        column(&rows, "node") == BTreeSet::from(["node-a".to_owned(), "node-b".to_owned()]),
        "node column of the merged rows: {answer}"
    );
    let paths = column(&rows, "req_path");
    for node in env.nodes.keys() {
        for path in node_paths(node) {
            ensure!(paths.contains(&path), "no row of {path}: {answer}");
        }
    }

    // The newest row of all, whichever agent has it.
    let newest = all.iter().map(time).collect::<Result<Vec<_>>>()?;
    let newest = newest.into_iter().max().context("no rows")?;
    let answer = query(env, &format!("/v1/tables/{TABLE}?limit=1"), Some(&token))?;
    ensure!(answer.status == 200, "{answer}");
    let rows = answer.rows()?;
    ensure!(
        rows.len() == 1 && all.contains(&rows[0]) && time(&rows[0])? == newest,
        "limit=1 should be the newest row of both nodes (time_ {newest}): {answer}\n{context}"
    );

    let answer = query(
        env,
        &format!("/v1/tables/{TABLE}?limit=1000&format=csv"),
        Some(&token),
    )?;
    ensure!(answer.status == 200, "{answer}");
    let records = csv_records(&answer.body);
    let header = records
        .first()
        .with_context(|| format!("no CSV: {answer}"))?;
    ensure!(
        header.first().map(String::as_str) == Some("time_"),
        "CSV header's first column should be time_: {answer}"
    );
    let node_column = header
        .iter()
        .position(|c| c == "node")
        .with_context(|| format!("no node column in the CSV header: {answer}"))?;
    let body = &records[1..];
    ensure!(
        body.len() == all.len() && body.iter().all(|r| r.len() == header.len()),
        "{} CSV records of {} columns each expected: {answer}",
        all.len(),
        header.len()
    );
    let csv_nodes: BTreeSet<&str> = body.iter().map(|r| r[node_column].as_str()).collect();
    ensure!(
        csv_nodes == BTreeSet::from(["node-a", "node-b"]),
        "CSV node column: {csv_nodes:?}; {answer}"
    );
    let csv_times = body
        .iter()
        .map(|r| r[0].parse::<i64>())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("a CSV time_ that is no number: {answer}"))?;
    ascending(&csv_times, &answer)?;

    let answer = query(
        env,
        &format!("/v1/tables/{TABLE}?limit=1000&format=ndjson"),
        Some(&token),
    )?;
    ensure!(answer.status == 200, "{answer}");
    let lines = answer
        .body
        .lines()
        .map(serde_json::from_str::<Value>)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("a line that is no JSON: {answer}"))?;
    ensure!(
        lines.iter().all(Value::is_object) && canonical(&lines) == canonical(&all),
        "NDJSON should be the agents' rows, one object a line: {answer}\n{context}"
    );
    Ok(())
}

fn the_table_list_names_each_table_once_with_its_nodes_and_summed_rows(env: &Env) -> Result<()> {
    let token = reader_token(env)?;
    // Nothing writes http_events now (the requests were sent in setup), so the counts hold still
    // between the agents' answers and the operator's.
    let mut own = BTreeMap::new();
    for (node, (url, _)) in &env.nodes {
        let (code, body) = env
            .rt
            .block_on(observe::agent_get(url, "/v1/tables", Some(&token)))?;
        ensure!(code == 200, "GET {url}/v1/tables: {code} {body}");
        let tables: Vec<Value> = serde_json::from_str(&body)?;
        let table = tables
            .iter()
            .find(|t| t["name"] == TABLE)
            .with_context(|| format!("{node}'s agent lists no {TABLE}: {body}"))?;
        own.insert(node.clone(), table["rows"].as_u64().context("no rows")?);
    }
    let answer = query(env, "/v1/tables", Some(&token))?;
    ensure!(answer.status == 200, "{answer}");
    ensure!(answer.nodes.as_deref() == Some("node-a,node-b"), "{answer}");
    let tables: Vec<Value> =
        serde_json::from_str(&answer.body).with_context(|| format!("no JSON array: {answer}"))?;
    let listed: Vec<&Value> = tables.iter().filter(|t| t["name"] == TABLE).collect();
    ensure!(
        listed.len() == 1,
        "{TABLE} listed {} times: {answer}",
        listed.len()
    );
    let sum: u64 = own.values().sum();
    ensure!(
        listed[0]["nodes"] == serde_json::json!(["node-a", "node-b"]) && listed[0]["rows"] == sum,
        "{TABLE} should be on node-a and node-b with {sum} rows (the agents count {own:?}): {}",
        listed[0]
    );
    Ok(())
}

fn the_agents_refusals_reach_the_caller_and_a_namespace_grant_reads_its_namespace_everywhere(
    env: &Env,
) -> Result<()> {
    let path = format!("/v1/tables/{TABLE}?limit=1000");
    let answer = query(env, &path, None)?;
    ensure!(
        answer.status == 401 && answer.body.contains("Authorization: Bearer"),
        "without a token the agents' 401 (saying to send a bearer token) should come: {answer}"
    );
    let team = env.cluster.identities()?.team_reader_token.clone();
    let answer = query(env, &path, Some(&team))?;
    ensure!(
        answer.status == 403 && answer.body.contains("may not read"),
        "a reader of {TEST_NAMESPACE} only should get the agents' 403 without ?namespace=: {answer}"
    );
    let answer = query(
        env,
        &format!("{path}&namespace={TEST_NAMESPACE}"),
        Some(&team),
    )?;
    ensure!(
        answer.status == 200 && answer.nodes.as_deref() == Some("node-a,node-b"),
        "{answer}"
    );
    let rows = answer.rows()?;
    let (_, all) = rows_of_every_node(env)?;
    ensure!(
        column(&rows, "namespace") == BTreeSet::from([TEST_NAMESPACE.to_owned()])
            && canonical(&rows) == canonical(&all),
        "the rows of {TEST_NAMESPACE} on both nodes should come: {answer}\nthe agents' rows: {all:?}"
    );
    Ok(())
}

fn node_asks_only_that_nodes_agent_and_a_table_no_node_has_is_not_found(env: &Env) -> Result<()> {
    let token = reader_token(env)?;
    let answer = query(
        env,
        &format!("/v1/tables/{TABLE}?limit=1000&node=node-b"),
        Some(&token),
    )?;
    ensure!(
        answer.status == 200 && answer.nodes.as_deref() == Some("node-b"),
        "{answer}"
    );
    let own = agent_rows(env, "node-b")?;
    ensure!(
        canonical(&answer.rows()?) == canonical(&own),
        "only node-b's rows should come: {answer}\nnode-b's own rows: {own:?}"
    );
    let answer = query(env, "/v1/tables/no_such_table", Some(&token))?;
    ensure!(
        answer.status == 404 && answer.body.contains("no node has a table"),
        "{answer}"
    );
    Ok(())
}

/// The busy pod of `node`: busy-a on node-a, busy-b on node-b.
fn busy_pod(node: &str) -> String {
    format!("busy-{}", node.trim_start_matches("node-"))
}

/// Starts each node's busy pod, applies the profiler Tracepoint and waits until each agent's own
/// `stack_traces` has `hot_three` rows of its node's busy pod. The pods come back to be stopped
/// once read: each busy loop would take a core of the machine until the end of the test.
fn profile_busy_pods(env: &Env) -> Result<Vec<FakePod>> {
    let cluster = &env.cluster;
    let mut pods = Vec::new();
    for (node, _) in NODES {
        let spec = PodSpec {
            namespace: TEST_NAMESPACE.into(),
            name: busy_pod(node),
            node: node.into(),
            labels: BTreeMap::from([("app".to_string(), "busy".to_string())]),
            container: "app".into(),
            // Sampled whenever it runs; at the lowest priority it leaves the cores to the
            // agents, the operator and the API server.
            command: vec![
                "nice".into(),
                "-n19".into(),
                env.hot.to_string_lossy().into_owned(),
            ],
        };
        pods.push(
            env.rt
                .block_on(FakePod::start(&cluster.client, &spec, &env.logs))?,
        );
    }
    cluster.kubectl.apply(expect::BUSY_PROFILER)?;
    let api = kube::Api::<Tracepoint>::namespaced(cluster.client.clone(), TEST_NAMESPACE);
    env.rt.block_on(observe::wait_condition(
        &api, "cpu", "Ready", "True", CONVERGE,
    ))?;
    for (node, _) in NODES {
        env.rt.block_on(observe::wait_probe_state(
            &cluster.client,
            node,
            PROFILER_ID,
            ProbeState::Attached,
            CONVERGE,
        ))?;
    }
    let token = reader_token(env)?;
    for (node, (url, _)) in &env.nodes {
        let pod = busy_pod(node);
        env.rt.block_on(wait::until_ok(
            &format!("hot_three rows of {pod} in {node}'s stack_traces"),
            CONVERGE,
            || async {
                let rows = expect::table_rows(url, &token, "stack_traces").await?;
                let hot = expect::hot_three_rows(&rows, TEST_NAMESPACE, &pod);
                ensure!(
                    hot > 0,
                    "no hot_three rows of {pod} yet ({} rows)",
                    rows.len()
                );
                Ok(())
            },
        ))?;
    }
    Ok(pods)
}

/// String `i` of `profile`'s string table.
fn string(profile: &Profile, i: i64) -> Option<&str> {
    let i = usize::try_from(i).ok()?;
    profile.string_table.get(i).map(String::as_str)
}

/// The samples (the first value, `samples/count`) of `profile` by their `pod` label.
fn samples_by_pod(profile: &Profile) -> Result<BTreeMap<String, i64>> {
    let first = profile
        .sample_type
        .first()
        .map(|t| string(profile, t.r#type));
    ensure!(
        first == Some(Some("samples")),
        "the first value of a sample should be samples/count, not {first:?}"
    );
    let mut by_pod = BTreeMap::new();
    for sample in &profile.sample {
        let pod = sample
            .label
            .iter()
            .find(|l| string(profile, l.key) == Some("pod"))
            .and_then(|l| string(profile, l.str))
            .unwrap_or_default();
        let count = sample
            .value
            .first()
            .with_context(|| format!("a sample without values: {sample:?}"))?;
        *by_pod.entry(pod.to_owned()).or_insert(0) += count;
    }
    Ok(by_pod)
}

/// The names of `profile`'s functions.
fn functions(profile: &Profile) -> BTreeSet<&str> {
    profile
        .function
        .iter()
        .filter_map(|f| string(profile, f.name))
        .collect()
}

/// The samples by pod of both agents' own profiles of the test namespace.
fn own_samples(env: &Env, scope: &str, token: &str) -> Result<BTreeMap<String, i64>> {
    let mut by_pod = BTreeMap::new();
    for (url, _) in env.nodes.values() {
        let answer = get(
            env,
            &format!("{url}/v1/profiles/pprof?{scope}"),
            Some(token),
        )?;
        ensure!(answer.status == 200, "{answer}");
        for (pod, count) in samples_by_pod(&answer.profile()?)? {
            *by_pod.entry(pod).or_insert(0) += count;
        }
    }
    Ok(by_pod)
}

fn one_cpu_profile_holds_the_samples_of_every_node_and_node_narrows_it(env: &Env) -> Result<()> {
    let busy = profile_busy_pods(env)?;
    let token = reader_token(env)?;
    let scope = format!("seconds={PROFILE_SECONDS}&namespace={TEST_NAMESPACE}");
    let both = Some("node-a,node-b");

    let answer = query(
        env,
        &format!("/v1/profiles/flamegraph.svg?{scope}"),
        Some(&token),
    )?;
    ensure!(
        answer.status == 200
            && answer.content_type.as_deref() == Some("image/svg+xml")
            && answer.nodes.as_deref() == both
            && answer.failed.is_none(),
        "an SVG of node-a and node-b with no failed node: {answer}"
    );
    ensure!(
        answer.body.contains("hot_three") && answer.body.contains("CPU on every node"),
        "the flame graph should show hot_three under a title of every node: {answer}"
    );

    // Samples are only added (the window outlasts the test): each pod's samples in the
    // operator's profile are at least what its agent had before and at most what it has after.
    let before = own_samples(env, &scope, &token)?;
    let answer = query(env, &format!("/v1/profiles/pprof?{scope}"), Some(&token))?;
    let after = own_samples(env, &scope, &token)?;
    ensure!(
        answer.status == 200 && answer.nodes.as_deref() == both && answer.failed.is_none(),
        "{answer}"
    );
    let profile = answer.profile()?;
    let merged = samples_by_pod(&profile)?;
    let pods: Vec<String> = NODES.iter().map(|(node, _)| busy_pod(node)).collect();
    ensure!(
        merged.keys().eq(&pods) && before.keys().eq(&pods),
        "the samples of {pods:?} should be in the operator's profile ({merged:?}) as in the agents' ({before:?})"
    );
    for pod in &pods {
        let (low, high) = (before[pod], after[pod]);
        ensure!(
            low > 0 && (low..=high).contains(&merged[pod]),
            "{pod}: {} samples through the operator, its agent had {low} before and {high} after",
            merged[pod]
        );
    }
    ensure!(
        functions(&profile).contains("hot_three"),
        "no hot_three function in the operator's profile: {:?}",
        functions(&profile)
    );

    // pod= narrows on every node: busy-b's samples alone, from node-b.
    let answer = query(
        env,
        &format!("/v1/profiles/pprof?{scope}&pod=busy-b"),
        Some(&token),
    )?;
    ensure!(
        answer.status == 200 && answer.nodes.as_deref() == both,
        "{answer}"
    );
    let profile = answer.profile()?;
    let by_pod = samples_by_pod(&profile)?;
    ensure!(
        by_pod.keys().eq(["busy-b"])
            && by_pod["busy-b"] >= before["busy-b"]
            && functions(&profile).contains("hot_three"),
        "pod=busy-b should be busy-b's hot_three samples, at least {} of them: {by_pod:?}",
        before["busy-b"]
    );

    // node= asks that node's agent only: busy-b does not run on node-a.
    let answer = query(
        env,
        &format!("/v1/profiles/pprof?{scope}&pod=busy-b&node=node-a"),
        Some(&token),
    )?;
    ensure!(
        answer.status == 200
            && answer.nodes.as_deref() == Some("node-a")
            && answer.failed.is_none(),
        "{answer}"
    );
    let profile = answer.profile()?;
    ensure!(
        profile.sample.is_empty(),
        "node-a has no sample of busy-b: {:?}",
        samples_by_pod(&profile)?
    );
    let answer = query(
        env,
        &format!("/v1/profiles/flamegraph.svg?{scope}&node=node-b"),
        Some(&token),
    )?;
    ensure!(
        answer.status == 200
            && answer.nodes.as_deref() == Some("node-b")
            && answer.body.contains("CPU on node-b")
            && answer.body.contains("hot_three"),
        "node-b's flame graph, titled with its name: {answer}"
    );

    for kind in ["pprof", "flamegraph.svg"] {
        let answer = query(env, &format!("/v1/profiles/{kind}?{scope}"), None)?;
        ensure!(
            answer.status == 401 && answer.body.contains("Authorization: Bearer"),
            "without a token the agents' 401 should come: {answer}"
        );
    }
    // Their rows stay; their busy loops need not.
    for pod in busy {
        env.rt.block_on(pod.delete(&env.cluster.client))?;
    }
    Ok(())
}

fn with_one_agent_stopped_the_others_rows_come_and_it_is_named_failed(env: &Env) -> Result<()> {
    let token = reader_token(env)?;
    let own = agent_rows(env, "node-a")?;
    if let Some(mut agent) = lock(&env.agents).remove("node-b") {
        agent.proc.stop(Duration::from_secs(10));
    }
    let answer = query(env, &format!("/v1/tables/{TABLE}?limit=1000"), Some(&token))?;
    ensure!(
        answer.status == 200 && answer.nodes.as_deref() == Some("node-a"),
        "{answer}"
    );
    ensure!(
        answer
            .failed
            .as_deref()
            .is_some_and(|f| f.starts_with("node-b (")),
        "Sonde-Failed-Nodes should name node-b: {answer}"
    );
    ensure!(
        canonical(&answer.rows()?) == canonical(&own),
        "node-a's rows should come: {answer}\nnode-a's own rows: {own:?}"
    );
    Ok(())
}

fn main() -> ExitCode {
    suite::main(
        setup,
        vec![
            Scenario::new(
                "the_rows_of_every_node_come_merged_oldest_first_in_every_format",
                the_rows_of_every_node_come_merged_oldest_first_in_every_format,
            ),
            Scenario::new(
                "the_table_list_names_each_table_once_with_its_nodes_and_summed_rows",
                the_table_list_names_each_table_once_with_its_nodes_and_summed_rows,
            ),
            Scenario::new(
                "the_agents_refusals_reach_the_caller_and_a_namespace_grant_reads_its_namespace_everywhere",
                the_agents_refusals_reach_the_caller_and_a_namespace_grant_reads_its_namespace_everywhere,
            ),
            Scenario::new(
                "node_asks_only_that_nodes_agent_and_a_table_no_node_has_is_not_found",
                node_asks_only_that_nodes_agent_and_a_table_no_node_has_is_not_found,
            ),
            Scenario::new(
                "one_cpu_profile_holds_the_samples_of_every_node_and_node_narrows_it",
                one_cpu_profile_holds_the_samples_of_every_node_and_node_narrows_it,
            ),
            // Last: it stops node-b's agent.
            Scenario::new(
                "with_one_agent_stopped_the_others_rows_come_and_it_is_named_failed",
                with_one_agent_stopped_the_others_rows_come_and_it_is_named_failed,
            ),
        ],
    )
}
