//! A typed client of the control plane: one method per operation of
//! `control_api::OPERATIONS`, over HTTP with one credential. The CLI's `cvm vm`,
//! `cvm size`, `cvm region`, `cvm image`, `cvm price`, `cvm host` and `cvm tenant` use
//! it, and so do the tests.

#![forbid(unsafe_code)]

pub use api_client::{ClientError, agent};
use api_client::{Method, Transport, segment as s};
use control_api::*;

/// The control plane at one base URL, called with one credential.
#[derive(Debug)]
pub struct Client {
    t: Transport,
}

type R<T> = Result<T, ClientError>;

impl Client {
    /// The control plane at `base`, presenting `credential`.
    pub fn new(agent: ureq::Agent, base: &str, credential: &str) -> Self {
        Client {
            t: Transport::new(agent, base, Some(credential.to_string())),
        }
    }

    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> R<T> {
        self.t.call::<(), T>(Method::Get, path, None)
    }

    fn send<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> R<T> {
        self.t.call(method, path, body)
    }

    /// `list_sizes`.
    pub fn list_sizes(&self) -> R<SizeList> {
        self.get("/sizes")
    }
    /// `list_regions`.
    pub fn list_regions(&self) -> R<RegionList> {
        self.get("/regions")
    }
    /// `list_images`.
    pub fn list_images(&self) -> R<ImageList> {
        self.get("/images")
    }
    /// `quote_price`.
    pub fn quote_price(&self, req: &PriceRequest) -> R<PriceQuote> {
        self.send(Method::Post, "/prices", Some(req))
    }
    /// `list_vms`.
    pub fn list_vms(&self) -> R<VmList> {
        self.get("/vms")
    }
    /// `create_vm`: an identical request for an existing VM returns it.
    pub fn create_vm(&self, name: &str, req: &CreateVmRequest) -> R<Vm> {
        self.send(Method::Put, &format!("/vms/{}", s(name)), Some(req))
    }
    /// `get_vm`.
    pub fn get_vm(&self, name: &str) -> R<Vm> {
        self.get(&format!("/vms/{}", s(name)))
    }
    /// `delete_vm`.
    pub fn delete_vm(&self, name: &str) -> R<()> {
        self.send::<(), ()>(Method::Delete, &format!("/vms/{}", s(name)), None)
    }
    /// `vm_events`.
    pub fn vm_events(&self, name: &str) -> R<VmEvents> {
        self.get(&format!("/vms/{}/events", s(name)))
    }
    /// `start_vm`: the attested boot; answers when the VM is `running` or `failed`.
    pub fn start_vm(&self, name: &str) -> R<Vm> {
        self.send::<(), Vm>(Method::Post, &format!("/vms/{}/start", s(name)), None)
    }
    /// `stop_vm`.
    pub fn stop_vm(&self, name: &str) -> R<Vm> {
        self.send::<(), Vm>(Method::Post, &format!("/vms/{}/stop", s(name)), None)
    }
    /// `restart_vm`.
    pub fn restart_vm(&self, name: &str) -> R<Vm> {
        self.send::<(), Vm>(Method::Post, &format!("/vms/{}/restart", s(name)), None)
    }
    /// `attest_vm`: a fresh token of the running VM.
    pub fn attest_vm(&self, name: &str, req: &AttestVmRequest) -> R<AttestVmResponse> {
        self.send(Method::Post, &format!("/vms/{}/attest", s(name)), Some(req))
    }
    /// `capture_vm` (always refused: confidential VMs do not support it).
    pub fn capture_vm(&self, name: &str) -> R<()> {
        self.send::<(), ()>(Method::Post, &format!("/vms/{}/capture", s(name)), None)
    }
    /// `migrate_vm` (always refused).
    pub fn migrate_vm(&self, name: &str) -> R<()> {
        self.send::<(), ()>(Method::Post, &format!("/vms/{}/migrate", s(name)), None)
    }
    /// `create_credential`.
    pub fn create_credential(&self, req: &CreateCredentialRequest) -> R<NewCredential> {
        self.send(Method::Post, "/credentials", Some(req))
    }
    /// `create_tenant` (operator).
    pub fn create_tenant(&self, name: &str, req: &CreateTenantRequest) -> R<NewCredential> {
        self.send(Method::Put, &format!("/tenants/{}", s(name)), Some(req))
    }
    /// `list_hosts` (operator).
    pub fn list_hosts(&self) -> R<HostList> {
        self.get("/hosts")
    }
    /// `register_host` (operator).
    pub fn register_host(&self, name: &str, req: &RegisterHostRequest) -> R<Host> {
        self.send(Method::Put, &format!("/hosts/{}", s(name)), Some(req))
    }
    /// `register_host_agent` (operator): where a host's agent listens.
    pub fn register_host_agent(&self, name: &str, req: &RegisterAgentRequest) -> R<Host> {
        self.send(Method::Put, &format!("/hosts/{}/agent", s(name)), Some(req))
    }
    /// `import_image` (operator): a disk image file on the control plane's machine.
    pub fn import_image(&self, id: &str, req: &ImportImageRequest) -> R<Image> {
        self.send(
            Method::Put,
            &format!("/images/{}/artifact", s(id)),
            Some(req),
        )
    }
}
