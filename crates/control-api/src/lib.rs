//! The control plane's API contract, shared by the server (`control`), the CLI and the
//! OpenAPI document (`openapi/control.json`):
//!
//! - request and response types ([`types`]) in Azure's VM model and names
//!   (`vmSize`, `securityProfile.uefiSettings.secureBootEnabled`,
//!   `osDisk.securityEncryptionType`), so a user of `az vm create` finds the fields
//!   they know, including the ones a confidential VM refuses;
//! - every operation with its method, path and the access it needs ([`OPERATIONS`]);
//!   the server checks access from this table before it reads a body;
//! - the OpenAPI document, generated from this crate alone ([`openapi`]).
//!
//! Refusals carry stable codes ([`codes`]).

#![forbid(unsafe_code)]

pub mod codes;
mod doc;
pub mod types;

pub use doc::openapi;
pub use types::*;

/// What an operation needs of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A tenant credential of any role: read the catalog and the tenant's VMs.
    Read,
    /// A tenant credential that may create and delete VMs (administrator, contributor).
    Write,
    /// A tenant credential that may manage the tenant's credentials (administrator).
    Admin,
    /// The platform operator's credential: tenants, hosts, images.
    Operator,
}

impl Access {
    /// The roles that have this access, as the OpenAPI document names them.
    pub fn roles(self) -> &'static str {
        match self {
            Access::Read => "administrator, contributor, reader",
            Access::Write => "administrator, contributor",
            Access::Admin => "administrator",
            Access::Operator => "the platform operator",
        }
    }
}

/// One operation of the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The OpenAPI `operationId`.
    pub id: &'static str,
    /// HTTP method, upper case.
    pub method: &'static str,
    /// Path template, `{name}` for parameters.
    pub path: &'static str,
    /// What the caller needs.
    pub access: Access,
    /// What a refused caller was not allowed to do, for the refusal's message.
    pub what: &'static str,
}

macro_rules! operations {
    ($($id:ident: $method:literal $path:literal, $access:ident, $what:literal;)*) => {
        /// Every operation of the API, in the order the OpenAPI document lists them.
        pub const OPERATIONS: &[Operation] = &[$(Operation {
            id: stringify!($id),
            method: $method,
            path: $path,
            access: Access::$access,
            what: $what,
        }),*];
    };
}

operations! {
    list_sizes: "GET" "/sizes", Read, "read the catalog";
    list_regions: "GET" "/regions", Read, "read the catalog";
    list_images: "GET" "/images", Read, "read the catalog";
    quote_price: "POST" "/prices", Read, "read prices";
    list_vms: "GET" "/vms", Read, "list VMs";
    create_vm: "PUT" "/vms/{name}", Write, "create VMs";
    get_vm: "GET" "/vms/{name}", Read, "read VMs";
    delete_vm: "DELETE" "/vms/{name}", Write, "delete VMs";
    vm_events: "GET" "/vms/{name}/events", Read, "read VM events";
    vm_console: "GET" "/vms/{name}/console", Read, "read VM consoles";
    start_vm: "POST" "/vms/{name}/start", Write, "start VMs";
    stop_vm: "POST" "/vms/{name}/stop", Write, "stop VMs";
    restart_vm: "POST" "/vms/{name}/restart", Write, "restart VMs";
    attest_vm: "POST" "/vms/{name}/attest", Read, "attest VMs";
    capture_vm: "POST" "/vms/{name}/capture", Write, "capture images";
    migrate_vm: "POST" "/vms/{name}/migrate", Write, "migrate VMs";
    create_credential: "POST" "/credentials", Admin, "manage credentials";
    create_tenant: "PUT" "/tenants/{name}", Operator, "create tenants";
    list_hosts: "GET" "/hosts", Operator, "list hosts";
    register_host: "PUT" "/hosts/{name}", Operator, "register hosts";
    register_host_agent: "PUT" "/hosts/{name}/agent", Operator, "register host agents";
    import_image: "PUT" "/images/{id}/artifact", Operator, "import images";
}

/// The request header a client names a retryable request with: a retry carrying the
/// same key gets the first answer (replayed, with `Idempotent-Replayed: true`) instead
/// of running again; 1 to 64 visible ASCII characters, remembered for a day per
/// tenant. Answers of 500 and above are not kept (a retry runs again).
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// The answer header that marks a replayed answer.
pub const IDEMPOTENT_REPLAYED: &str = "Idempotent-Replayed";

/// The operations that take [`IDEMPOTENCY_KEY`]: those that change a VM. (Attesting
/// changes nothing; a credential's answer is a secret the store does not keep.)
pub const IDEMPOTENT_OPERATIONS: [&str; 5] = [
    "create_vm",
    "delete_vm",
    "start_vm",
    "stop_vm",
    "restart_vm",
];

/// The operation named `id`.
pub fn operation(id: &str) -> Option<&'static Operation> {
    OPERATIONS.iter().find(|o| o.id == id)
}
