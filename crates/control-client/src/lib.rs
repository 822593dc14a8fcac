//! A typed client of the control plane: one method per operation of
//! `control_api::OPERATIONS`, over HTTP with one credential. The CLI's `cvm vm`,
//! `cvm size`, `cvm region`, `cvm image`, `cvm price`, `cvm host` and `cvm tenant` use
//! it, and so do the tests.

#![forbid(unsafe_code)]

pub use api_client::{ClientError, agent};
use api_client::{Method, Transport, segment as s};
use control_api::*;

/// How many times a VM-changing call is sent again after its exchange broke off.
pub const RETRIES: u32 = 3;

/// How long a retried call waits for the first to finish.
pub const IN_PROGRESS_WAIT: std::time::Duration = std::time::Duration::from_secs(90);

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

    /// A call that changes a VM, sent with a fresh `Idempotency-Key` and sent again
    /// with the same key when the exchange broke off ([`RETRIES`] times) or while the
    /// first is still running (for up to [`IN_PROGRESS_WAIT`]): a request that
    /// reached the control plane runs once, whatever the network did.
    fn send_once<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> R<T> {
        let mut k = [0u8; 16];
        if aws_lc_rs::rand::fill(&mut k).is_err() {
            // Without randomness no key can be unique: send it plainly, once.
            return self.send(method, path, body);
        }
        let key = hex::encode(k);
        let headers = [(IDEMPOTENCY_KEY, key.as_str())];
        let deadline = std::time::Instant::now() + IN_PROGRESS_WAIT;
        let mut broke = 0;
        loop {
            match self.t.call_with(method, path, body, &headers) {
                Err(ClientError::Transport { .. }) if broke < RETRIES => {
                    broke += 1;
                    std::thread::sleep(std::time::Duration::from_millis(200 << broke));
                }
                Err(e)
                    if e.code() == Some(codes::REQUEST_IN_PROGRESS)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
                r => return r,
            }
        }
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
        self.send_once(Method::Put, &format!("/vms/{}", s(name)), Some(req))
    }
    /// `get_vm`.
    pub fn get_vm(&self, name: &str) -> R<Vm> {
        self.get(&format!("/vms/{}", s(name)))
    }
    /// `delete_vm`.
    pub fn delete_vm(&self, name: &str) -> R<()> {
        self.send_once::<(), ()>(Method::Delete, &format!("/vms/{}", s(name)), None)
    }
    /// `vm_console`: the end of the VM's guest console.
    pub fn vm_console(&self, name: &str) -> R<VmConsole> {
        self.get(&format!("/vms/{}/console", s(name)))
    }
    /// `vm_events`.
    pub fn vm_events(&self, name: &str) -> R<VmEvents> {
        self.get(&format!("/vms/{}/events", s(name)))
    }
    /// `start_vm`: the attested boot; answers when the VM is `running` or `failed`.
    pub fn start_vm(&self, name: &str) -> R<Vm> {
        self.send_once::<(), Vm>(Method::Post, &format!("/vms/{}/start", s(name)), None)
    }
    /// `stop_vm`.
    pub fn stop_vm(&self, name: &str) -> R<Vm> {
        self.send_once::<(), Vm>(Method::Post, &format!("/vms/{}/stop", s(name)), None)
    }
    /// `restart_vm`.
    pub fn restart_vm(&self, name: &str) -> R<Vm> {
        self.send_once::<(), Vm>(Method::Post, &format!("/vms/{}/restart", s(name)), None)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::io::{BufRead, BufReader, Write};

    /// Reads one request's head from `s`: its `Idempotency-Key`, if any.
    fn key_of(s: &std::net::TcpStream) -> Option<String> {
        let mut r = BufReader::new(s);
        let mut key = None;
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                return key;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case(IDEMPOTENCY_KEY)
            {
                key = Some(v.trim().to_string());
            }
        }
    }

    #[test]
    fn a_call_that_broke_off_is_sent_again_with_its_key() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let mut keys = Vec::new();
            // First: the connection closes without an answer. Second: the first is
            // still running. Third: the answer.
            for (i, conn) in listener.incoming().take(3).enumerate() {
                let mut s = conn.unwrap();
                keys.push(key_of(&s));
                let (status, body) = match i {
                    0 => continue,
                    1 => (
                        "409 Conflict",
                        r#"{"error":{"code":"request_in_progress","message":"wait"}}"#,
                    ),
                    _ => ("204 No Content", ""),
                };
                write!(
                    s,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
            }
            keys
        });
        let c = Client::new(agent(None).unwrap(), &base, "cred");
        c.delete_vm("vm").unwrap();
        let keys = server.join().unwrap();
        assert_eq!(keys.len(), 3);
        let first = keys[0].clone().expect("the key is sent");
        assert_eq!(first.len(), 32);
        assert!(
            keys.iter().all(|k| k.as_deref() == Some(first.as_str())),
            "{keys:?}"
        );
        // A fresh key per call.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let mut s = listener.incoming().next().unwrap().unwrap();
            let k = key_of(&s);
            write!(s, "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n").unwrap();
            k
        });
        Client::new(agent(None).unwrap(), &base, "cred")
            .delete_vm("vm")
            .unwrap();
        assert_ne!(server.join().unwrap(), Some(first));
    }
}
