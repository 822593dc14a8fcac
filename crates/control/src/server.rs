//! The control plane's HTTP API (axum) over [`Control`]: every route is an operation
//! of `control_api::OPERATIONS`, admitted from that table before its body is read, and
//! run on the blocking pool (the store's calls block).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post, put};
use control_api::codes;
use httpd::{ApiError, Credential, bearer};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::service::{Caller, Control, ControlConfig};
use crate::store::Idempotent;

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

/// The request's `Idempotency-Key`, if it has one.
fn idempotency_key(h: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = h.get(control_api::IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(k) if (1..=64).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(k.to_string()))
        }
        _ => Err(ApiError::bad(
            "bad_request",
            "Idempotency-Key is 1 to 64 visible ASCII characters",
        )),
    }
}

/// An answer: `status` with the JSON `body`, marked replayed when it is.
fn answer(status: u16, body: String, replayed: bool) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = if status == StatusCode::NO_CONTENT {
        status.into_response()
    } else {
        (
            status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    };
    if replayed {
        r.headers_mut().insert(
            control_api::IDEMPOTENT_REPLAYED,
            axum::http::HeaderValue::from_static("true"),
        );
    }
    r
}

/// [`run`] for an operation of [`control_api::IDEMPOTENT_OPERATIONS`] on `target`:
/// with an `Idempotency-Key`, the first answer is kept (below 500) and a retry with
/// the key gets it again instead of running `f` (a delete's success is 204, others'
/// 200).
async fn keyed<T: Serialize + Send + 'static>(
    c: Arc<Control>,
    cred: Credential,
    headers: &HeaderMap,
    op: &'static str,
    target: String,
    b: Body,
    f: impl FnOnce(&Arc<Control>, &Caller, Bytes) -> Result<T, ApiError> + Send + 'static,
) -> Result<Response, ApiError> {
    let key = idempotency_key(headers)?;
    let done = if op == "delete_vm" { 204 } else { 200 };
    let bytes = httpd::body_rejection(b, MAX_BODY, "bad_request")
        .map_err(|(status, code, message)| ApiError::new(status, code, message))?;
    httpd::blocking(move || {
        let caller = c.authorize(cred.bearer(), op)?;
        let run = |c: &Arc<Control>| -> (u16, String, Result<(), ApiError>) {
            match f(c, &caller, bytes.clone()) {
                Ok(v) => match serde_json::to_string(&v) {
                    Ok(s) => (done, s, Ok(())),
                    Err(e) => {
                        let e = ApiError::logged("encoding", e);
                        (e.status, e.body().to_string(), Err(e))
                    }
                },
                Err(e) => (e.status, e.body().to_string(), Err(e)),
            }
        };
        let Some(key) = key else {
            let (status, body, out) = run(&c);
            return out.map(|()| answer(status, body, false));
        };
        let scope = match &caller {
            Caller::Tenant { tenant, .. } => tenant.clone(),
            Caller::Operator => String::new(),
        };
        let fingerprint = {
            let mut h = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
            for part in [op.as_bytes(), b"\n", target.as_bytes(), b"\n", &bytes[..]] {
                h.update(part);
            }
            hex::encode(h.finish())
        };
        let store = c.store();
        let store_err = |e| ApiError::logged("store", e);
        match store
            .idempotency_begin(&scope, &key, &fingerprint)
            .map_err(store_err)?
        {
            Idempotent::Run { owner } => {
                let (status, body, out) = run(&c);
                store
                    .idempotency_finish(
                        &scope,
                        &key,
                        &owner,
                        (status < 500).then_some((status, &body)),
                    )
                    .map_err(store_err)?;
                out.map(|()| answer(status, body, false))
            }
            Idempotent::Replay { status, body } => Ok(answer(status, body, true)),
            Idempotent::InProgress => Err(ApiError::new(
                409,
                codes::REQUEST_IN_PROGRESS,
                "the request first sent with this Idempotency-Key is still running; retry later",
            )),
            Idempotent::Reused => Err(ApiError::new(
                422,
                codes::IDEMPOTENCY_KEY_REUSED,
                "this Idempotency-Key was used for another request; use a new key for a new request",
            )),
        }
    })
    .await?
}

/// The JSON body `bytes` as `T` ([`typed`]'s rules).
fn typed_bytes<T: DeserializeOwned>(bytes: Bytes) -> Result<T, ApiError> {
    typed(Ok(bytes))
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
    headers: HeaderMap,
    b: Body,
) -> Result<Response, ApiError> {
    keyed(
        c,
        cred,
        &headers,
        "create_vm",
        n.clone(),
        b,
        move |c, a, b| {
            let vm = c.create_vm(a, &n, &typed_bytes(b)?)?;
            // A VM whose OS disk is pre-encrypted is `creating` until that is done, in
            // the background (a disk takes longer than a request may).
            if vm.state == control_api::VmState::Creating {
                let (background, id) = (c.clone(), vm.id.clone());
                std::thread::spawn(move || {
                    if let Err(e) = background.finish_creating(&id) {
                        tracing::warn!(vm = %id, "pre-encryption: {}", e.message);
                    }
                });
            }
            Ok(vm)
        },
    )
    .await
}
async fn get_vm(State(c): S, Path(n): Path<String>, cred: Credential) -> R<control_api::Vm> {
    run(c, cred, "get_vm", move |c, a| c.get_vm(a, &n)).await
}
async fn delete_vm(
    State(c): S,
    Path(n): Path<String>,
    cred: Credential,
    headers: HeaderMap,
    b: Body,
) -> Result<Response, ApiError> {
    keyed(
        c,
        cred,
        &headers,
        "delete_vm",
        n.clone(),
        b,
        move |c, a, _| c.delete_vm(a, &n).map(|_| ()),
    )
    .await
}
async fn vm_console(
    State(c): S,
    Path(n): Path<String>,
    cred: Credential,
) -> R<control_api::VmConsole> {
    run(c, cred, "vm_console", move |c, a| c.vm_console(a, &n)).await
}
async fn vm_events(
    State(c): S,
    Path(n): Path<String>,
    cred: Credential,
) -> R<control_api::VmEvents> {
    run(c, cred, "vm_events", move |c, a| c.vm_events(a, &n)).await
}
async fn start_vm(
    State(c): S,
    Path(n): Path<String>,
    cred: Credential,
    headers: HeaderMap,
    b: Body,
) -> Result<Response, ApiError> {
    keyed(
        c,
        cred,
        &headers,
        "start_vm",
        n.clone(),
        b,
        move |c, a, _| c.start_vm(a, &n),
    )
    .await
}
async fn stop_vm(
    State(c): S,
    Path(n): Path<String>,
    cred: Credential,
    headers: HeaderMap,
    b: Body,
) -> Result<Response, ApiError> {
    keyed(
        c,
        cred,
        &headers,
        "stop_vm",
        n.clone(),
        b,
        move |c, a, _| c.stop_vm(a, &n),
    )
    .await
}
async fn restart_vm(
    State(c): S,
    Path(n): Path<String>,
    cred: Credential,
    headers: HeaderMap,
    b: Body,
) -> Result<Response, ApiError> {
    keyed(
        c,
        cred,
        &headers,
        "restart_vm",
        n.clone(),
        b,
        move |c, a, _| c.restart_vm(a, &n),
    )
    .await
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
        .route("/vms/{name}/console", get(vm_console))
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
        // Encrypted OS disks are made by their hosts' agents.
        control.pre_encrypt_through_agents();
        let control = Arc::new(control);
        // Sagas another replica left (it died) are taken over.
        control.keep_sagas();
        Ok(router(control))
    })
}
