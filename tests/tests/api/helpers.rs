//! The sandbox every test starts: a real app on port 0 over an isolated
//! database, a manual clock, an operator token, and typed clients.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use sovra::{App, Reloader, Services};
use sovra_proto::identity::v1 as pb;
use sovra_runtime::{
    auth::{Authority, Keyring},
    clock::ManualClock,
    config::{LoadOptions, Settings, TlsMode},
    tls::{self, pki, Connector},
};
use sqlx::Connection;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::oneshot,
};
use tonic::{transport::Channel, Code, Request, Status};
use tonic_types::StatusExt;

pub const PASSWORD: &str = "Correct-Horse-9";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs an async test body once per backend.
#[macro_export]
macro_rules! backend_test {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if $crate::helpers::postgres_available().await {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            }
        }
    };
}

fn pg_base_url() -> String {
    std::env::var("SOVRA_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// True when PostgreSQL answers. Locally a miss is reported loudly and the
/// PostgreSQL half skipped; under CI=true it fails the test.
pub async fn postgres_available() -> bool {
    match sqlx::postgres::PgConnection::connect(&pg_base_url()).await {
        Ok(c) => {
            let _ = c.close().await;
            true
        }
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!(
                    "PostgreSQL is required under CI=true and is unreachable at {}: {e}",
                    pg_base_url()
                );
            }
            eprintln!(
                "\n!!! SKIPPED the PostgreSQL half: cannot reach {} ({e}). Start PostgreSQL or set SOVRA_TEST_POSTGRES_URL.\n",
                pg_base_url()
            );
            false
        }
    }
}

fn config_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config")
}

/// Settings for a test app of `instance` over the databases of `db`.
pub fn settings(instance: &str, db: &TestDb) -> Settings {
    settings_with(instance, db, Vec::new())
}

/// [`settings`] with more overrides.
pub fn settings_with(instance: &str, db: &TestDb, more: Vec<(String, String)>) -> Settings {
    let mut overrides: Vec<(String, String)> = vec![
        ("server.listen".into(), "127.0.0.1:0".into()),
        ("server.admin_listen".into(), "127.0.0.1:0".into()),
        ("identity.database_url".into(), db.url.clone()),
        ("relationships.database_url".into(), db.rel_url.clone()),
        ("commerce.database_url".into(), db.com_url.clone()),
        // Quick outbox retries keep the outbox tests short.
        ("relationships.outbox_poll_interval_ms".into(), "50".into()),
        ("relationships.outbox_max_backoff_ms".into(), "200".into()),
        // Load tests make thousands of calls in seconds; the limits' own
        // test sets small ones.
        ("limits.partner_burst".into(), "1000000".into()),
        ("limits.customer_burst".into(), "1000000".into()),
    ];
    overrides.extend(more);
    Settings::load(&LoadOptions {
        config_dir: Some(config_dir()),
        instance: Some(instance.into()),
        overrides: {
            overrides.extend([
                // Cheap hashes keep the suite fast; the algorithm is the same.
                ("identity.password_memory_kib".into(), "64".into()),
                ("identity.password_iterations".into(), "1".into()),
            ]);
            overrides
        },
        ..Default::default()
    })
    .expect("test settings load")
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("sovra-{prefix}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Overrides for mutual TLS with a CA and service certificates of
/// `instance` made in `dir` (as `sovra up` makes them).
pub fn tls_overrides(dir: &Path, instance: &str) -> Vec<(String, String)> {
    pki::ensure(dir, instance, &pki::loopback_names()).unwrap();
    vec![
        ("tls.mode".into(), "mutual".into()),
        (
            "tls.ca_file".into(),
            dir.join("ca.pem").display().to_string(),
        ),
        ("tls.cert_dir".into(), dir.display().to_string()),
    ]
}

/// A channel to `addr` over TLS, trusting `ca_file` for `instance` and
/// presenting `identity` (certificate, key) when given.
pub fn tls_channel(
    addr: std::net::SocketAddr,
    instance: &str,
    ca_file: &Path,
    identity: Option<(&Path, &Path)>,
) -> Channel {
    let cfg = tls::client_config(instance, ca_file, identity).unwrap();
    sovra_runtime::peers::channel(&format!("https://{addr}"), Some(Connector::fixed(cfg))).unwrap()
}

/// Isolated databases (identity's, relationships' and commerce's): fresh
/// SQLite files or fresh PostgreSQL databases.
pub struct TestDb {
    pub url: String,
    pub rel_url: String,
    pub com_url: String,
    dir: Option<PathBuf>,
    pg_names: Vec<String>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        let id = uuid::Uuid::new_v4().simple().to_string();
        match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(format!("sovra-test-{id}"));
                std::fs::create_dir_all(&dir).unwrap();
                let file = |n: &str| format!("sqlite://{}?mode=rwc", dir.join(n).display());
                TestDb {
                    url: file("identity.db"),
                    rel_url: file("relationships.db"),
                    com_url: file("commerce.db"),
                    dir: Some(dir),
                    pg_names: Vec::new(),
                }
            }
            Backend::Postgres => {
                let names = [
                    format!("sovra_t_{id}"),
                    format!("sovra_t_{id}_rel"),
                    format!("sovra_t_{id}_com"),
                ];
                let mut c = sqlx::postgres::PgConnection::connect(&pg_base_url())
                    .await
                    .unwrap();
                for name in &names {
                    sqlx::query(&format!("CREATE DATABASE {name}"))
                        .execute(&mut c)
                        .await
                        .unwrap();
                }
                let _ = c.close().await;
                let base = pg_base_url();
                let (prefix, _) = base.rsplit_once('/').unwrap();
                TestDb {
                    url: format!("{prefix}/{}", names[0]),
                    rel_url: format!("{prefix}/{}", names[1]),
                    com_url: format!("{prefix}/{}", names[2]),
                    dir: None,
                    pg_names: names.to_vec(),
                }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        let names = std::mem::take(&mut self.pg_names);
        if !names.is_empty() {
            // Drop from a thread of its own: Drop can't await.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(mut c) = sqlx::postgres::PgConnection::connect(&pg_base_url()).await {
                        for name in names {
                            let _ = sqlx::query(&format!(
                                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                            ))
                            .execute(&mut c)
                            .await;
                        }
                    }
                });
            })
            .join();
        }
    }
}

/// A running Sovra and what tests need to drive it.
pub struct TestApp {
    pub channel: Channel,
    pub clock: ManualClock,
    pub authority: Authority,
    pub operator: String,
    pub db_url: String,
    pub rel_db_url: String,
    pub com_db_url: String,
    pub addr: std::net::SocketAddr,
    /// The commerce service itself, to run its background jobs on demand.
    pub commerce: Option<sovra_commerce::Commerce>,
    /// Where `GET /metrics` answers.
    pub admin: Option<std::net::SocketAddr>,
    /// Applies a changed configuration, as SIGHUP does.
    pub reloader: Reloader,
    pub settings: Settings,
    /// The OTLP exporter, when the settings name a collector.
    pub otlp: Option<sovra_runtime::telemetry::Otlp>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _db: Option<TestDb>,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> TestApp {
        Self::spawn_instance(backend, "global").await
    }

    pub async fn spawn_instance(backend: Backend, instance: &str) -> TestApp {
        let db = TestDb::new(backend).await;
        let mut app = Self::start(&settings(instance, &db), Arc::new(Keyring::generate()))
            .await
            .unwrap();
        app._db = Some(db);
        app
    }

    /// An app whose grant pushes to identity pass through `Proxy`, which the
    /// test can take down and bring back.
    pub async fn spawn_with_grant_proxy(backend: Backend) -> (TestApp, Proxy) {
        let db = TestDb::new(backend).await;
        let proxy = Proxy::start().await;
        let s = settings_with(
            "global",
            &db,
            vec![(
                "relationships.grant_push_url".into(),
                format!("http://{}", proxy.addr),
            )],
        );
        let mut app = Self::start(&s, Arc::new(Keyring::generate()))
            .await
            .unwrap();
        proxy.target(app.addr);
        app._db = Some(db);
        (app, proxy)
    }

    /// Starts an app over `settings` (the database is the caller's).
    pub async fn start(settings: &Settings, keyring: Arc<Keyring>) -> anyhow::Result<TestApp> {
        Self::start_services(settings, keyring, Services::ALL).await
    }

    /// Starts an app serving only `services`, as `sovra serve` does.
    pub async fn start_services(
        settings: &Settings,
        keyring: Arc<Keyring>,
        services: Services,
    ) -> anyhow::Result<TestApp> {
        let clock = ManualClock::default();
        let app = App::build_services(settings, keyring, Arc::new(clock.clone()), services).await?;
        let addr = app.addr();
        let authority = app.authority().clone();
        let commerce = app.commerce().cloned();
        let reloader = app.reloader();
        let admin = app.admin_addr();
        let otlp = app.otlp();
        let operator = authority.issue_operator(24 * 3600).value;
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        let channel = match settings.tls.mode {
            TlsMode::Mutual => {
                tls_channel(addr, &settings.instance.name, &settings.tls.ca_file, None)
            }
            TlsMode::Off => {
                Channel::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect()
                    .await?
            }
        };
        Ok(TestApp {
            channel,
            clock,
            authority,
            operator,
            db_url: settings.identity.database_url.clone(),
            rel_db_url: settings.relationships.database_url.clone(),
            com_db_url: settings.commerce.database_url.clone(),
            addr,
            commerce,
            reloader,
            admin,
            settings: settings.clone(),
            otlp,
            stop: Some(stop),
            server: Some(server),
            _db: None,
        })
    }

    /// Stops serving and waits for the drain.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.server.take() {
            h.await.unwrap().unwrap();
        }
    }

    /// Keeps `db` alive as long as the app.
    pub fn keep(&mut self, db: TestDb) {
        self._db = Some(db);
    }

    /// The databases kept with [`TestApp::keep`] or made by `spawn`.
    pub fn databases(&self) -> &TestDb {
        self._db.as_ref().expect("the app keeps its databases")
    }

    /// A channel presenting `service`'s certificate (mutual TLS apps only).
    pub fn channel_as(&self, service: &str) -> Channel {
        let dir = &self.settings.tls.cert_dir;
        tls_channel(
            self.addr,
            &self.settings.instance.name,
            &self.settings.tls.ca_file,
            Some((
                &dir.join(format!("{service}.pem")),
                &dir.join(format!("{service}.key")),
            )),
        )
    }

    pub fn service_token(&self) -> String {
        self.authority.issue_service("relationships", 3600).value
    }

    pub fn tenants(&self) -> tenant_service_client::TenantServiceClient<Channel> {
        tenant_service_client::TenantServiceClient::new(self.channel.clone())
    }

    pub fn users(&self) -> user_service_client::UserServiceClient<Channel> {
        user_service_client::UserServiceClient::new(self.channel.clone())
    }

    pub fn auth(&self) -> auth_service_client::AuthServiceClient<Channel> {
        auth_service_client::AuthServiceClient::new(self.channel.clone())
    }

    pub fn access(&self) -> access_service_client::AccessServiceClient<Channel> {
        access_service_client::AccessServiceClient::new(self.channel.clone())
    }

    pub fn customers(&self) -> rel::customer_service_client::CustomerServiceClient<Channel> {
        rel::customer_service_client::CustomerServiceClient::new(self.channel.clone())
    }

    pub fn resellers(&self) -> rel::reseller_service_client::ResellerServiceClient<Channel> {
        rel::reseller_service_client::ResellerServiceClient::new(self.channel.clone())
    }

    pub fn delegated(
        &self,
    ) -> rel::delegated_admin_service_client::DelegatedAdminServiceClient<Channel> {
        rel::delegated_admin_service_client::DelegatedAdminServiceClient::new(self.channel.clone())
    }

    pub fn service_requests(
        &self,
    ) -> rel::service_request_service_client::ServiceRequestServiceClient<Channel> {
        rel::service_request_service_client::ServiceRequestServiceClient::new(self.channel.clone())
    }

    /// A partner tenant authorized for `programs`.
    pub async fn partner(&self, name: &str, programs: &[PartnerAuthorization]) -> Tenant {
        let t = self.tenant(TenantKind::Partner, name).await;
        self.tenants()
            .set_partner_authorizations(req(
                &self.operator,
                SetPartnerAuthorizationsRequest {
                    tenant_id: t.id.clone(),
                    authorizations: programs.iter().map(|p| *p as i32).collect(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap();
        t
    }

    /// A token of a new FULL-access agent of `partner` (who may create
    /// trials and offers and redeem product keys, as the admin may not).
    pub async fn agent(&self, partner: &Tenant) -> String {
        self.agent_user(partner).await.token
    }

    /// As [`TestApp::agent`], with the user (to sign in again later).
    pub async fn agent_user(&self, partner: &Tenant) -> TestUser {
        let alias = format!("agent-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
        self.user(
            &partner.admin_token,
            partner,
            &alias,
            CompanyRole::Unspecified,
            SupportedCompaniesAccess::Full,
        )
        .await
    }

    /// A delegated-admin offer code from `partner` (by its admin).
    pub async fn offer(&self, partner: &Tenant) -> String {
        self.delegated()
            .create_delegated_admin_offer(req(
                &partner.admin_token,
                rel::CreateDelegatedAdminOfferRequest {
                    partner_tenant_id: partner.id.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_or_else(|s| panic!("offer by {} failed: {s:?}", partner.id))
            .into_inner()
            .offer
            .unwrap()
            .code
    }

    /// The customer's admin accepts `code`.
    pub async fn accept(
        &self,
        customer: &Tenant,
        code: &str,
        reassign: bool,
    ) -> Result<rel::DelegatedAdminRelationship, Status> {
        self.delegated()
            .accept_delegated_admin_offer(req(
                &customer.admin_token,
                rel::AcceptDelegatedAdminOfferRequest {
                    code: code.into(),
                    customer_tenant_id: customer.id.clone(),
                    reassign,
                    ..Default::default()
                },
            ))
            .await
            .map(|r| r.into_inner().relationship.unwrap())
    }

    /// The customer's global admin removes delegated-admin relationship
    /// `id` (empty: whichever is active), under `request_id` (empty: none).
    pub async fn remove(
        &self,
        customer: &Tenant,
        request_id: &str,
        id: &str,
    ) -> Result<rel::DelegatedAdminRelationship, Status> {
        self.delegated()
            .remove_delegated_admin(req(
                &customer.admin_token,
                rel::RemoveDelegatedAdminRequest {
                    request_id: request_id.into(),
                    customer_tenant_id: customer.id.clone(),
                    id: id.into(),
                },
            ))
            .await
            .map(|r| r.into_inner().relationship.unwrap())
    }

    /// Whether `token`'s user may reset a non-admin password in `tenant`.
    pub async fn may(&self, token: &str, tenant: &Tenant, p: Permission) -> bool {
        self.access()
            .check_access(req(
                token,
                CheckAccessRequest {
                    tenant_id: tenant.id.clone(),
                    permission: p as i32,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .allowed
    }

    /// Polls (no sleeping to synchronise: each probe is a real call) until
    /// `may` answers `want`, for at most `within`. Returns whether it did.
    pub async fn await_access(
        &self,
        token: &str,
        tenant: &Tenant,
        p: Permission,
        want: bool,
        within: std::time::Duration,
    ) -> bool {
        let deadline = std::time::Instant::now() + within;
        loop {
            if self.may(token, tenant, p).await == want {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Creates a tenant with a global admin `admin@<domain>`; returns it and
    /// the admin's token.
    pub async fn tenant(&self, kind: TenantKind, name: &str) -> Tenant {
        let domain = format!(
            "{}-{}.example",
            name.to_lowercase().replace(' ', "-"),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let resp = self
            .tenants()
            .create_tenant(req(
                &self.operator,
                CreateTenantRequest {
                    kind: kind as i32,
                    display_name: name.into(),
                    primary_domain: domain.clone(),
                    first_admin: Some(FirstAdmin {
                        user_principal_name: format!("admin@{domain}"),
                        display_name: format!("{name} Admin"),
                        password: PASSWORD.into(),
                    }),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let t = resp.tenant.unwrap();
        let admin = resp.first_admin.unwrap();
        let token = self.sign_in(&admin.user_principal_name, PASSWORD).await;
        Tenant {
            id: t.id,
            domain,
            admin_id: admin.id,
            admin_token: token,
        }
    }

    pub async fn sign_in(&self, upn: &str, password: &str) -> String {
        self.auth()
            .sign_in(SignInRequest {
                user_principal_name: upn.into(),
                password: password.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("sign-in of {upn} failed: {s:?}"))
            .into_inner()
            .access_token
    }

    /// Creates a user in `tenant` (by `token`) and signs it in.
    pub async fn user(
        &self,
        token: &str,
        tenant: &Tenant,
        alias: &str,
        role: CompanyRole,
        access: SupportedCompaniesAccess,
    ) -> TestUser {
        let upn = format!("{alias}@{}", tenant.domain);
        let u = self
            .users()
            .create_user(req(
                token,
                CreateUserRequest {
                    tenant_id: tenant.id.clone(),
                    user_principal_name: upn.clone(),
                    display_name: alias.into(),
                    company_role: role as i32,
                    supported_companies_access: access as i32,
                    password: PASSWORD.into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_or_else(|s| panic!("creating {upn} failed: {s:?}"))
            .into_inner()
            .user
            .unwrap();
        let token = self.sign_in(&upn, PASSWORD).await;
        TestUser {
            id: u.id,
            upn,
            token,
        }
    }

    /// Pushes a delegated grant as the relationships service would.
    pub async fn grant(
        &self,
        partner: &Tenant,
        customer: &Tenant,
        state: DelegatedGrantState,
        version: i64,
    ) -> ApplyDelegatedGrantResponse {
        self.access()
            .apply_delegated_grant(req(
                &self.service_token(),
                ApplyDelegatedGrantRequest {
                    partner_tenant_id: partner.id.clone(),
                    customer_tenant_id: customer.id.clone(),
                    relationship_id: "rel-1".into(),
                    state: state as i32,
                    version,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
    }

    /// Counts rows straight from identity's database, to prove a rejection wrote nothing.
    pub async fn count(&self, sql: &str) -> i64 {
        count_in(&self.db_url, sql).await
    }

    /// Polls until relationships' grant outbox is empty, for at most
    /// `within`; returns how many changes are still undelivered.
    pub async fn drain_outbox(&self, within: std::time::Duration) -> i64 {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = self.rel_count("SELECT COUNT(*) FROM grant_outbox").await;
            if left == 0 || std::time::Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Counts rows straight from relationships' database.
    pub async fn rel_count(&self, sql: &str) -> i64 {
        count_in(&self.rel_db_url, sql).await
    }

    /// Counts rows straight from commerce's database.
    pub async fn com_count(&self, sql: &str) -> i64 {
        count_in(&self.com_db_url, sql).await
    }

    /// Runs one statement straight on commerce's database.
    pub async fn com_exec(&self, sql: &str) {
        sqlx::any::install_default_drivers();
        let mut c = sqlx::AnyConnection::connect(&self.com_db_url)
            .await
            .unwrap();
        sqlx::query(sql).execute(&mut c).await.unwrap();
        let _ = c.close().await;
    }

    pub fn catalog(&self) -> com::catalog_service_client::CatalogServiceClient<Channel> {
        com::catalog_service_client::CatalogServiceClient::new(self.channel.clone())
    }

    pub fn trials(
        &self,
    ) -> com::trial_invitation_service_client::TrialInvitationServiceClient<Channel> {
        com::trial_invitation_service_client::TrialInvitationServiceClient::new(
            self.channel.clone(),
        )
    }

    pub fn offers(
        &self,
    ) -> com::purchase_offer_service_client::PurchaseOfferServiceClient<Channel> {
        com::purchase_offer_service_client::PurchaseOfferServiceClient::new(self.channel.clone())
    }

    pub fn com_links(&self) -> com::link_service_client::LinkServiceClient<Channel> {
        com::link_service_client::LinkServiceClient::new(self.channel.clone())
    }

    pub fn keys(&self) -> com::product_key_service_client::ProductKeyServiceClient<Channel> {
        com::product_key_service_client::ProductKeyServiceClient::new(self.channel.clone())
    }

    pub fn subscriptions(
        &self,
    ) -> com::subscription_service_client::SubscriptionServiceClient<Channel> {
        com::subscription_service_client::SubscriptionServiceClient::new(self.channel.clone())
    }

    pub fn notifications(
        &self,
    ) -> com::notification_service_client::NotificationServiceClient<Channel> {
        com::notification_service_client::NotificationServiceClient::new(self.channel.clone())
    }

    /// A new customer `name` signing up through trial `code` with delegated
    /// admin accepted; returns the redemption and the first admin's UPN.
    pub async fn sign_up(
        &self,
        code: &str,
        name: &str,
        request_id: &str,
    ) -> (com::Redemption, String) {
        let (choice, upn) = new_customer(name);
        let redemption = self
            .trials()
            .redeem_trial_invitation(Request::new(com::RedeemTrialInvitationRequest {
                request_id: request_id.into(),
                code: code.into(),
                customer: Some(choice),
                accept_delegated_admin: true,
                reassign: false,
            }))
            .await
            .unwrap()
            .into_inner()
            .redemption
            .unwrap();
        (redemption, upn)
    }

    /// A trial invitation for `product` by `token` of `partner`; returns its code.
    pub async fn trial_code(
        &self,
        token: &str,
        partner: &Tenant,
        product: &str,
        da: bool,
    ) -> String {
        self.trials()
            .create_trial_invitation(req(
                token,
                com::CreateTrialInvitationRequest {
                    request_id: uuid::Uuid::new_v4().to_string(),
                    partner_tenant_id: partner.id.clone(),
                    product_id: product.into(),
                    include_delegated_admin: da,
                },
            ))
            .await
            .unwrap_or_else(|s| panic!("creating a trial invitation failed: {s:?}"))
            .into_inner()
            .invitation
            .unwrap()
            .code
    }

    /// Imports `n` fresh keys of `product` (as the operator); returns them printed.
    pub async fn import_keys(&self, product: &str, licenses: i32, n: usize) -> Vec<String> {
        let keys: Vec<String> = (0..n)
            .map(|_| sovra_commerce::ProductKey::generate().formatted())
            .collect();
        for chunk in keys.chunks(1000) {
            let resp = self
                .keys()
                .import_product_keys(req(
                    &self.operator,
                    com::ImportProductKeysRequest {
                        request_id: uuid::Uuid::new_v4().to_string(),
                        keys: chunk
                            .iter()
                            .map(|k| com::ProductKeyImport {
                                product_key: k.clone(),
                                product_id: product.into(),
                                license_count: licenses,
                                term_days: 365,
                            })
                            .collect(),
                    },
                ))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(resp.imported_count as usize, chunk.len());
        }
        keys
    }
}

pub async fn count_in(url: &str, sql: &str) -> i64 {
    sqlx::any::install_default_drivers();
    let mut c = sqlx::AnyConnection::connect(url).await.unwrap();
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&mut c).await.unwrap();
    let _ = c.close().await;
    n
}

/// A TCP forwarder a test can take down (refusing and cutting connections)
/// and bring back, to make one path between services unavailable.
pub struct Proxy {
    pub addr: std::net::SocketAddr,
    target: Arc<std::sync::OnceLock<std::net::SocketAddr>>,
    up: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start() -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = Arc::new(std::sync::OnceLock::<std::net::SocketAddr>::new());
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns = Arc::new(std::sync::Mutex::new(Vec::new()));
        let accept = {
            let (target, up, conns) = (target.clone(), up.clone(), conns.clone());
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let Some(to) = target.get().copied() else {
                        continue;
                    };
                    if !up.load(Ordering::SeqCst) {
                        continue; // dropped: the connection is refused
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut out) = tokio::net::TcpStream::connect(to).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                        }
                    });
                    conns.lock().unwrap().push(task);
                }
            })
        };
        Proxy {
            addr,
            target,
            up,
            conns,
            accept,
        }
    }

    pub fn target(&self, to: std::net::SocketAddr) {
        let _ = self.target.set(to);
    }

    /// Cuts every connection and refuses new ones.
    pub fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn up(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.down();
        self.accept.abort();
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: String,
    pub domain: String,
    pub admin_id: String,
    pub admin_token: String,
}

#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: String,
    pub upn: String,
    pub token: String,
}

/// A request carrying `authorization: Bearer <token>`.
pub fn req<T>(token: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// An UpdateUser request applying `paths` of `user` (which names the user by id).
pub fn update_user(
    token: &str,
    tenant_id: &str,
    user: User,
    paths: &[&str],
) -> Request<UpdateUserRequest> {
    req(
        token,
        UpdateUserRequest {
            tenant_id: tenant_id.into(),
            user: Some(user),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
            ..Default::default()
        },
    )
}

/// Asserts a call failed with `code`, and returns the status.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> Status {
    match result {
        Ok(v) => panic!("expected {code:?}, got success: {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "unexpected status: {s:?}");
            assert!(
                s.get_details_error_info().is_some(),
                "every error carries ErrorInfo: {s:?}"
            );
            s
        }
    }
}

/// Asserts INVALID_ARGUMENT naming `field` in a BadRequest violation.
#[track_caller]
pub fn expect_invalid<T: std::fmt::Debug>(result: Result<T, Status>, field: &str) -> Status {
    let s = expect_code(result, Code::InvalidArgument);
    let bad = s
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no BadRequest details: {s:?}"));
    assert!(
        bad.field_violations.iter().any(|v| v.field == field),
        "expected a violation on `{field}`, got {:?}",
        bad.field_violations
    );
    s
}

/// `GET path` on `addr` over HTTP/1.0; the body.
pub async fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| body.to_owned())
        .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_owned()))
}

/// The value of the unlabelled gauge `name` in a `/metrics` text.
pub fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

pub use pb::*;
pub use sovra_proto::commerce::v1 as com;
pub use sovra_proto::relationships::v1 as rel;

/// A subscription advisor with delegated administration.
pub const ADVISOR: &[PartnerAuthorization] = &[
    PartnerAuthorization::SubscriptionAdvisor,
    PartnerAuthorization::DelegatedAdmin,
];

/// A sign-up through a link: the customer's name, domain and first admin.
pub fn new_customer(name: &str) -> (com::CustomerChoice, String) {
    let domain = format!(
        "{}-{}.example",
        name.to_lowercase(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let upn = format!("admin@{domain}");
    let choice = com::CustomerChoice {
        customer: Some(com::customer_choice::Customer::NewCustomer(
            com::NewCustomer {
                display_name: name.into(),
                primary_domain: domain,
                admin_user_principal_name: upn.clone(),
                admin_display_name: format!("{name} Admin"),
                admin_password: PASSWORD.into(),
                ..Default::default()
            },
        )),
    };
    (choice, upn)
}

pub fn existing(customer: &str) -> Option<com::CustomerChoice> {
    Some(com::CustomerChoice {
        customer: Some(com::customer_choice::Customer::CustomerTenantId(
            customer.into(),
        )),
    })
}
