//! The control plane's HTTP API (axum) over [`Control`]: every route is an operation
//! of `control_api::OPERATIONS`, admitted from that table before its body is read, and
//! run on the blocking pool (the store's calls block).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use httpd::{ApiError, Credential, bearer};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::service::{Caller, Control, ControlConfig};

/// The largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

type S = State<Arc<Control>>;
type Body = Result<Bytes, BytesRejection>;
type R<T> = Result<axum::Json<T>, ApiError>;

/// The body as the operation's request: 413 over [`MAX_BODY`], 400 `bad_request` when
/// it is not a JSON object of that request's shape (serde's message names the field).
fn typed<T: DeserializeOwned>(b: Body) -> Result<T, ApiError> {
    let bytes = httpd::body_rejection(b, MAX_BODY, "bad_request")
        .map_err(|(status, code, message)| ApiError::new(status, code, message))?;
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad(
            "bad_request",
            "the request body is not a JSON object",
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad(
            "bad_request",
            e.to_string().chars().take(300).collect::<String>(),
        )
    })
}

/// Admits the caller for `op` and runs `f` on the blocking pool.
async fn run<T: Serialize + Send + 'static>(
    c: Arc<Control>,
    cred: Credential,
    op: &'static str,
    f: impl FnOnce(&Control, &Caller) -> Result<T, ApiError> + Send + 'static,
) -> R<T> {
    httpd::blocking(move || {
        let caller = c.authorize(cred.bearer(), op)?;
        f(&c, &caller)
    })
    .await?
    .map(axum::Json)
}

async fn sizes(State(c): S, cred: Credential) -> R<control_api::SizeList> {
    run(c, cred, "list_sizes", |c, _| Ok(c.sizes())).await
}
async fn regions(State(c): S, cred: Credential) -> R<control_api::RegionList> {
    run(c, cred, "list_regions", |c, _| c.regions()).await
}
async fn images(State(c): S, cred: Credential) -> R<control_api::ImageList> {
    run(c, cred, "list_images", |c, _| c.images()).await
}
async fn prices(State(c): S, cred: Credential, b: Body) -> R<control_api::PriceQuote> {
    run(c, cred, "quote_price", |c, _| c.quote(&typed(b)?)).await
}
async fn list_vms(State(c): S, cred: Credential) -> R<control_api::VmList> {
    run(c, cred, "list_vms", |c, a| c.list_vms(a)).await
}
async fn create_vm(
    State(c): S,
    Path(n): Path<String>,
    cred: Credential,
    b: Body,
) -> R<control_api::Vm> {
    let background = c.clone();
    let vm = run(c, cred, "create_vm", move |c, a| {
        c.create_vm(a, &n, &typed(b)?)
    })
    .await?;
    // A VM whose OS disk is pre-encrypted is `creating` until that is done, in the
    // background (a disk takes longer than a request may).
    if vm.0.state == control_api::VmState::Creating {
        let id = vm.0.id.clone();
        std::thread::spawn(move || {
            if let Err(e) = background.finish_creating(&id) {
                tracing::warn!(vm = %id, "pre-encryption: {}", e.message);
            }
        });
    }
    Ok(vm)
}
async fn get_vm(State(c): S, Path(n): Path<String>, cred: Credential) -> R<control_api::Vm> {
    run(c, cred, "get_vm", move |c, a| c.get_vm(a, &n)).await
}
async fn delete_vm(
    State(c): S,
    Path(n): Path<String>,
    cred: Credential,
) -> Result<StatusCode, ApiError> {
    let _ = run(c, cred, "delete_vm", move |c, a| c.delete_vm(a, &n)).await?;
    Ok(StatusCode::NO_CONTENT)
}
async fn vm_events(
    State(c): S,
    Path(n): Path<String>,
    cred: Credential,
) -> R<control_api::VmEvents> {
    run(c, cred, "vm_events", move |c, a| c.vm_events(a, &n)).await
}
async fn start_vm(State(c): S, Path(n): Path<String>, cred: Credential) -> R<control_api::Vm> {
    run(c, cred, "start_vm", move |c, a| c.start_vm(a, &n)).await
}
async fn stop_vm(State(c): S, Path(n): Path<String>, cred: Credential) -> R<control_api::Vm> {
    run(c, cred, "stop_vm", move |c, a| c.stop_vm(a, &n)).await
}
async fn restart_vm(State(c): S, Path(n): Path<String>, cred: Credential) -> R<control_api::Vm> {
    run(c, cred, "restart_vm", move |c, a| c.restart_vm(a, &n)).await
}
async fn attest_vm(
    State(c): S,
    Path(n): Path<String>,
    cred: Credential,
    b: Body,
) -> R<control_api::AttestVmResponse> {
    run(c, cred, "attest_vm", move |c, a| {
        c.attest_vm(a, &n, &typed(b)?)
    })
    .await
}
async fn capture_vm(
    State(c): S,
    Path(n): Path<String>,
    cred: Credential,
) -> Result<StatusCode, ApiError> {
    let _ = run(c, cred, "capture_vm", move |c, a| {
        c.unsupported_operation(a, &n, "image capture")
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
async fn migrate_vm(
    State(c): S,
    Path(n): Path<String>,
    cred: Credential,
) -> Result<StatusCode, ApiError> {
    let _ = run(c, cred, "migrate_vm", move |c, a| {
        c.unsupported_operation(a, &n, "live migration")
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
async fn credentials(State(c): S, cred: Credential, b: Body) -> R<control_api::NewCredential> {
    run(c, cred, "create_credential", |c, a| {
        c.create_credential(a, &typed(b)?)
    })
    .await
}
async fn tenant(
    State(c): S,
    Path(n): Path<String>,
    cred: Credential,
    b: Body,
) -> R<control_api::NewCredential> {
    run(c, cred, "create_tenant", move |c, _| {
        c.create_tenant(&n, &typed(b)?)
    })
    .await
}
async fn hosts(State(c): S, cred: Credential) -> R<control_api::HostList> {
    run(c, cred, "list_hosts", |c, _| c.hosts()).await
}
async fn register_host(
    State(c): S,
    Path(n): Path<String>,
    cred: Credential,
    b: Body,
) -> R<control_api::Host> {
    run(c, cred, "register_host", move |c, _| {
        c.register_host(&n, &typed(b)?)
    })
    .await
}
async fn register_host_agent(
    State(c): S,
    Path(n): Path<String>,
    cred: Credential,
    b: Body,
) -> R<control_api::Host> {
    let background = c.clone();
    let (host, again) = httpd::blocking(move || {
        c.authorize(cred.bearer(), "register_host_agent")?;
        c.register_host_agent(&n, &typed(b)?)
    })
    .await??;
    // The host's VMs whose processes ended with its old agent boot again, in the
    // background (each boot takes as long as a start).
    if !again.is_empty() {
        std::thread::spawn(move || {
            let n = background.resume(&again);
            tracing::info!(
                "{n} of {} VMs booted again on a restarted host agent",
                again.len()
            );
        });
    }
    Ok(axum::Json(host))
}
async fn import_image(
    State(c): S,
    Path(id): Path<String>,
    cred: Credential,
    b: Body,
) -> R<control_api::Image> {
    run(c, cred, "import_image", move |c, _| {
        c.import_image(&id, &typed(b)?)
    })
    .await
}

/// The API's router.
pub fn router(c: Arc<Control>) -> Router {
    let gate = c.clone();
    let check: httpd::BodyGate =
        Arc::new(move |p| !httpd::large_body(p) || gate.authenticated(bearer(&p.headers)));
    let routes = Router::new()
        .route("/sizes", get(sizes))
        .route("/regions", get(regions))
        .route("/images", get(images))
        .route("/images/{id}/artifact", put(import_image))
        .route("/prices", post(prices))
        .route("/vms", get(list_vms))
        .route("/vms/{name}", put(create_vm).get(get_vm).delete(delete_vm))
        .route("/vms/{name}/events", get(vm_events))
        .route("/vms/{name}/start", post(start_vm))
        .route("/vms/{name}/stop", post(stop_vm))
        .route("/vms/{name}/restart", post(restart_vm))
        .route("/vms/{name}/attest", post(attest_vm))
        .route("/vms/{name}/capture", post(capture_vm))
        .route("/vms/{name}/migrate", post(migrate_vm))
        .route("/credentials", post(credentials))
        .route("/tenants/{name}", put(tenant))
        .route("/hosts", get(hosts))
        .route("/hosts/{name}", put(register_host))
        .route("/hosts/{name}/agent", put(register_host_agent));
    httpd::api_router(routes, MAX_BODY, check).with_state(c)
}

pub use httpd::{ServeError, TlsFiles};

/// Binds `listen`, opens the control plane, reports the address (and the operator's
/// credential file when this start created it), and serves until the process ends.
pub fn run_server(
    listen: &str,
    tls: Option<TlsFiles>,
    cfg: ControlConfig,
    on_listening: impl FnOnce(SocketAddr, &str, Option<&std::path::Path>),
) -> Result<(), ServeError> {
    httpd::run(listen, tls, move |addr, base| {
        let (control, created) =
            Control::open(cfg).map_err(|e| ServeError::Service(e.to_string()))?;
        on_listening(addr, &base, created.as_deref());
        Ok(router(Arc::new(control)))
    })
}
