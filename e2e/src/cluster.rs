//! A control plane prepared for Sonde: CRDs from `crds/`, the chart's RBAC and admission policies
//! from `helm template`, and a separate identity (ServiceAccount token from the TokenRequest API) for
//! the operator, each node's agent (a token bound to a pod on its node, as the DaemonSet's pods get
//! theirs), a user allowed to read tables, a scraper allowed to read `/metrics` and a user who is
//! allowed nothing.
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::control_plane::ControlPlane;
use crate::helm;
use crate::kubeconfig;
use crate::kubectl::Kubectl;
use crate::wait;

/// Namespace the test's own pods and ServiceAccounts live in.
pub const TEST_NAMESPACE: &str = "sonde-e2e";
/// ServiceAccount bound to the chart's `sonde-data-reader` ClusterRole.
pub const READER_SA: &str = "table-reader";
/// ServiceAccount with no permissions at all.
pub const OUTSIDER_SA: &str = "outsider";
/// ServiceAccount granted `get tables.sonde.dev` in [`TEST_NAMESPACE`] only.
pub const TEAM_READER_SA: &str = "team-reader";
/// ServiceAccount bound to the chart's `sonde-metrics-reader` ClusterRole, as a Prometheus is.
pub const METRICS_READER_SA: &str = "metrics-reader";

/// What [`Cluster::start`] installs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Install {
    /// Also install the chart's RBAC and make the operator/agent/reader identities (needs helm).
    pub rbac: bool,
}

/// Identities made from the chart's ServiceAccounts.
#[derive(Clone, Debug)]
pub struct Identities {
    pub operator_kubeconfig: PathBuf,
    /// Token of a user granted `sonde-data-reader` (get tables.sonde.dev cluster-wide).
    pub reader_token: String,
    /// Token of a user granted get tables.sonde.dev in [`TEST_NAMESPACE`] only.
    pub team_reader_token: String,
    /// Token of a user with no roles.
    pub outsider_token: String,
    /// Token of a scraper granted `sonde-metrics-reader` (get the non-resource URL /metrics).
    pub metrics_token: String,
}

pub struct Cluster {
    pub dir: PathBuf,
    pub control_plane: ControlPlane,
    /// kubectl as the admin.
    pub kubectl: Kubectl,
    /// kube client as the admin.
    pub client: kube::Client,
    pub identities: Option<Identities>,
}

impl Cluster {
    /// Starts a control plane in `dir` and installs the CRDs (and the chart's RBAC when asked).
    pub async fn start(dir: &Path, install: Install) -> Result<Cluster> {
        let control_plane = ControlPlane::start(dir).await?;
        let kubectl = Kubectl::new(&control_plane.admin_kubeconfig)?;
        let client = kubeconfig::client(&control_plane.admin_kubeconfig).await?;
        let mut cluster = Cluster {
            dir: dir.to_path_buf(),
            control_plane,
            kubectl,
            client,
            identities: None,
        };
        cluster.install_crds().await?;
        for ns in [TEST_NAMESPACE, helm::NAMESPACE] {
            cluster.ensure_namespace(ns)?;
        }
        if install.rbac {
            cluster.identities = Some(cluster.install_rbac()?);
        }
        Ok(cluster)
    }

    /// The identities; fails if the cluster was started without RBAC.
    pub fn identities(&self) -> Result<&Identities> {
        self.identities
            .as_ref()
            .context("this cluster was started without the chart's RBAC (Install { rbac: true })")
    }

    pub fn ensure_namespace(&self, ns: &str) -> Result<()> {
        self.kubectl.apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"
        ))?;
        Ok(())
    }

    /// `kubectl apply -f crds/` and waits until every CRD is Established.
    async fn install_crds(&self) -> Result<()> {
        let crds = crate::tools::workspace_root().join("crds");
        self.kubectl
            .run(&["apply", "-f", &crds.to_string_lossy()], None)
            .context("installing crds/*.yaml")?;
        let kubectl = self.kubectl.clone();
        wait::until("CRDs Established", Duration::from_secs(30), || {
            let out = kubectl.run(
                &[
                    "wait",
                    "--for=condition=Established",
                    "--timeout=5s",
                    "-f",
                    &crds.to_string_lossy(),
                ],
                None,
            );
            async move { Ok(out.is_ok().then_some(())) }
        })
        .await
    }

    /// Installs the chart's RBAC objects and makes a kubeconfig or token per identity.
    fn install_rbac(&self) -> Result<Identities> {
        let rbac = helm::rbac_manifests()?;
        self.kubectl
            .apply(&rbac)
            .context("applying the chart's RBAC objects")?;
        self.make_identities()
    }

    /// The identities of [`Identities`], made from the chart's ServiceAccounts once the chart's
    /// RBAC is in the cluster (applied by [`Cluster::start`], or by a real `helm install`).
    pub fn make_identities(&self) -> Result<Identities> {
        self.kubectl.apply(&format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {READER_SA}, namespace: {TEST_NAMESPACE}}}\n\
             ---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {OUTSIDER_SA}, namespace: {TEST_NAMESPACE}}}\n\
             ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\n\
             metadata: {{name: e2e-table-reader}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: sonde-data-reader}}\n\
             subjects: [{{kind: ServiceAccount, name: {READER_SA}, namespace: {TEST_NAMESPACE}}}]\n\
             ---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {TEAM_READER_SA}, namespace: {TEST_NAMESPACE}}}\n\
             ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\n\
             metadata: {{name: sonde-tables-reader, namespace: {TEST_NAMESPACE}}}\n\
             rules: [{{apiGroups: [sonde.dev], resources: [tables], verbs: [get]}}]\n\
             ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\n\
             metadata: {{name: e2e-team-reader, namespace: {TEST_NAMESPACE}}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: sonde-tables-reader}}\n\
             subjects: [{{kind: ServiceAccount, name: {TEAM_READER_SA}, namespace: {TEST_NAMESPACE}}}]\n\
             ---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {METRICS_READER_SA}, namespace: {TEST_NAMESPACE}}}\n\
             ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\n\
             metadata: {{name: e2e-metrics-reader}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: sonde-metrics-reader}}\n\
             subjects: [{{kind: ServiceAccount, name: {METRICS_READER_SA}, namespace: {TEST_NAMESPACE}}}]\n"
        ))?;
        let operator_token = self.token(helm::NAMESPACE, &format!("{}-operator", helm::RELEASE))?;
        let cp = &self.control_plane;
        Ok(Identities {
            operator_kubeconfig: cp.token_kubeconfig(
                &self.dir.join("operator.kubeconfig"),
                "sonde-operator",
                &operator_token,
            )?,
            reader_token: self.token(TEST_NAMESPACE, READER_SA)?,
            outsider_token: self.token(TEST_NAMESPACE, OUTSIDER_SA)?,
            team_reader_token: self.token(TEST_NAMESPACE, TEAM_READER_SA)?,
            metrics_token: self.token(TEST_NAMESPACE, METRICS_READER_SA)?,
        })
    }

    /// A token for a ServiceAccount from the TokenRequest API (`kubectl create token`).
    pub fn token(&self, namespace: &str, sa: &str) -> Result<String> {
        self.token_with(namespace, sa, &[])
    }

    fn token_with(&self, namespace: &str, sa: &str, extra: &[&str]) -> Result<String> {
        let mut args = vec!["create", "token", sa, "-n", namespace, "--duration=24h"];
        args.extend_from_slice(extra);
        let out = self
            .kubectl
            .run(&args, None)
            .with_context(|| format!("TokenRequest for ServiceAccount {namespace}/{sa}"))?;
        Ok(out.trim().to_owned())
    }

    /// A kubeconfig for the agent of `node` (a Node object that exists), as the chart's DaemonSet
    /// pod there gets its identity: the agent ServiceAccount's token bound to a Pod on `node`, so
    /// the API server knows the node and the chart's admission policy lets this agent write that
    /// node's NodeAssignment only. The Pod object stands for the DaemonSet's pod (nothing runs it)
    /// and carries its selector labels, so the operator finds it among the agents.
    pub fn agent_kubeconfig(&self, node: &str) -> Result<PathBuf> {
        self.identities()?;
        let (ns, sa) = (helm::NAMESPACE, format!("{}-agent", helm::RELEASE));
        let pod = format!("{sa}-{node}");
        self.kubectl
            .apply(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: {ns}, labels: {{\
                 app.kubernetes.io/name: sonde, app.kubernetes.io/instance: {release}, \
                 app.kubernetes.io/component: agent}}}}\n\
                 spec: {{nodeName: {node}, serviceAccountName: {sa}, \
                 containers: [{{name: agent, image: sonde}}]}}\n",
                release = helm::RELEASE
            ))
            .with_context(|| format!("creating the agent's Pod {ns}/{pod}"))?;
        let token = self.token_with(
            ns,
            &sa,
            &["--bound-object-kind", "Pod", "--bound-object-name", &pod],
        )?;
        self.control_plane.token_kubeconfig(
            &self.dir.join(format!("agent-{node}.kubeconfig")),
            "sonde-agent",
            &token,
        )
    }
}
