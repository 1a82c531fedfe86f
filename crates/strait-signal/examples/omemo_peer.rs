//! The strait-signal side of the cross-implementation tests: one OMEMO device speaking the
//! line-oriented JSON "peer protocol" of `tests/signal_interop/PROTOCOL.md` on stdin/stdout.
//! The test driver pairs it with python-omemo (oldmemo, twomemo) and passes XML between them.
//! Logs go to stderr; stdout carries only replies.
#![forbid(unsafe_code)]

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rand_core::OsRng;
use serde_json::{Value, json};
use std::io::{BufRead, Write};
use strait_signal::device::{DeviceError, DeviceV2, DeviceV03};
use strait_signal::error::SignalError;
use strait_signal::keys::IdentityKeyPair;
use strait_signal::media::{self, AesgcmUrl};
use strait_signal::omemo::xml::v2::{
    BundleV2, DeviceListV2, DeviceV2 as ListedDeviceV2, EncryptedV2,
};
use strait_signal::omemo::xml::v03::{BundleV03, DeviceListV03, EncryptedV03};
use strait_signal::omemo::{NS_V2, NS_V03};
use strait_signal::omemo2::InMemoryOmemo2Store;
use strait_signal::store::memory::{InMemoryStore, TrustPolicy};

/// A failed request: a reason code of PROTOCOL.md §6 and a message.
struct Failure(&'static str, String);

impl Failure {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Failure(reason, message.into())
    }
}

impl From<DeviceError> for Failure {
    fn from(e: DeviceError) -> Self {
        let reason = match &e {
            DeviceError::Signal(s) => signal_reason(s),
            DeviceError::Omemo(_) => "decryption_failed",
            DeviceError::NoDevices(_) => "no_devices",
            DeviceError::NotForUs(_) => "not_for_us",
            DeviceError::BadBundle(..) => "bad_bundle",
            DeviceError::IdentityMismatch(_) => "identity_mismatch",
            DeviceError::Envelope(_) => "envelope_invalid",
            DeviceError::BadRequest(_) => "bad_request",
        };
        Failure(reason, e.to_string())
    }
}

fn signal_reason(e: &SignalError) -> &'static str {
    match e {
        SignalError::DuplicateMessage { .. } => "duplicate",
        SignalError::BadMac => "bad_mac",
        SignalError::NoSession => "no_session",
        SignalError::TooFarInFuture { .. } => "too_many_skipped",
        SignalError::UntrustedIdentity => "identity_mismatch",
        SignalError::MissingPreKey(_) | SignalError::MissingSignedPreKey(_) => {
            "key_exchange_failed"
        }
        SignalError::InvalidSignature
        | SignalError::InvalidKey
        | SignalError::BadKeyType(_)
        | SignalError::NonCanonicalKey
        | SignalError::ZeroSharedSecret => "key_exchange_failed",
        _ => "decryption_failed",
    }
}

type Reply = Result<Value, Failure>;

struct Peer {
    jid: String,
    device_id: u32,
    v03: Option<DeviceV03<InMemoryStore>>,
    v2: Option<DeviceV2<InMemoryOmemo2Store>>,
    outbox: Vec<Value>,
}

fn field<'a>(req: &'a Value, name: &str) -> Result<&'a Value, Failure> {
    req.get(name)
        .ok_or_else(|| Failure::new("bad_request", format!("missing field {name}")))
}

fn str_field<'a>(req: &'a Value, name: &str) -> Result<&'a str, Failure> {
    field(req, name)?
        .as_str()
        .ok_or_else(|| Failure::new("bad_request", format!("{name} must be a string")))
}

fn b64_field(req: &Value, name: &str) -> Result<Vec<u8>, Failure> {
    B64.decode(str_field(req, name)?)
        .map_err(|e| Failure::new("bad_request", format!("{name}: {e}")))
}

fn bad_xml(e: impl std::fmt::Display) -> Failure {
    Failure::new("bad_xml", e.to_string())
}

impl Peer {
    fn v03(&mut self) -> Result<&mut DeviceV03<InMemoryStore>, Failure> {
        self.v03
            .as_mut()
            .ok_or_else(|| Failure::new("not_initialized", "init first"))
    }

    fn v2(&mut self) -> Result<&mut DeviceV2<InMemoryOmemo2Store>, Failure> {
        self.v2
            .as_mut()
            .ok_or_else(|| Failure::new("not_initialized", "init first"))
    }

    fn namespace(&self, req: &Value) -> Result<&'static str, Failure> {
        match str_field(req, "ns")? {
            NS_V03 => Ok(NS_V03),
            NS_V2 => Ok(NS_V2),
            other => Err(Failure::new(
                "unknown_namespace",
                format!("namespace {other} not supported"),
            )),
        }
    }

    fn public_data(&mut self, ns: &str) -> Reply {
        let device_id = self.device_id;
        if ns == NS_V03 {
            let list = DeviceListV03 {
                devices: vec![device_id],
            };
            let bundle = self.v03()?.bundle()?.to_xml();
            Ok(json!({"bundle_xml": bundle, "device_list_xml": list.to_xml()}))
        } else {
            let list = DeviceListV2 {
                devices: vec![ListedDeviceV2 {
                    id: device_id,
                    label: None,
                    label_sig: None,
                }],
            };
            let bundle = self.v2()?.bundle()?.to_xml();
            Ok(json!({"bundle_xml": bundle, "device_list_xml": list.to_xml()}))
        }
    }

    fn handle(&mut self, cmd: &str, req: &Value) -> Reply {
        match cmd {
            "hello" => Ok(json!({
                "implementation": format!("strait-signal {}", env!("CARGO_PKG_VERSION")),
                "protocol": 1,
                "namespaces": [NS_V03, NS_V2],
            })),
            "init" => self.init(req),
            "refresh_bundle" => {
                let ns = self.namespace(req)?;
                self.public_data(ns)
            }
            "add_device" => self.add_device(req),
            "encrypt" => self.encrypt(req),
            "decrypt" => self.decrypt(req),
            "reset_session" => {
                let ns = self.namespace(req)?;
                let jid = str_field(req, "jid")?.to_owned();
                let n = match ns {
                    NS_V03 => self.v03()?.reset_sessions(&jid)?,
                    _ => self.v2()?.reset_sessions(&jid)?,
                };
                Ok(json!({"sessions_dropped": n}))
            }
            "encrypt_file" => encrypt_file(req),
            "decrypt_file" => decrypt_file(req),
            "shutdown" => Ok(json!({})),
            other => Err(Failure::new(
                "unknown_command",
                format!("unknown command {other}"),
            )),
        }
    }

    fn init(&mut self, req: &Value) -> Reply {
        if self.v03.is_some() {
            return Err(Failure::new("bad_request", "init called twice"));
        }
        self.jid = str_field(req, "jid")?.to_owned();
        let mut rng = OsRng;
        self.device_id = match req.get("device_id").and_then(Value::as_u64) {
            Some(id) if (1..=0x7FFF_FFFF).contains(&id) => id as u32,
            _ => (rand_core::RngCore::next_u32(&mut rng) % 0x7FFF_FFFE) + 1,
        };
        // One identity for both namespaces, as XEP-0384 clients do.
        let identity = IdentityKeyPair::generate(&mut rng);
        let mut store = InMemoryStore::new(identity.clone(), 0);
        store.set_trust_policy(TrustPolicy::TrustAll);
        let jid = self.jid.clone();
        self.v03 = Some(DeviceV03::new(
            jid.clone(),
            self.device_id,
            store,
            &mut rng,
        )?);
        let o2 = InMemoryOmemo2Store::new();
        self.v2 = Some(DeviceV2::new(jid, self.device_id, identity, o2, &mut rng)?);
        let v03 = self.public_data(NS_V03)?;
        let v2 = self.public_data(NS_V2)?;
        Ok(json!({"device_id": self.device_id, "namespaces": {NS_V03: v03, NS_V2: v2}}))
    }

    fn add_device(&mut self, req: &Value) -> Reply {
        let ns = self.namespace(req)?;
        let jid = str_field(req, "jid")?.to_owned();
        let device_id = field(req, "device_id")?
            .as_u64()
            .filter(|d| (1..=0x7FFF_FFFF).contains(d))
            .ok_or_else(|| Failure::new("bad_request", "bad device_id"))?
            as u32;
        let bundle_xml = str_field(req, "bundle_xml")?;
        let list_xml = req.get("device_list_xml").and_then(Value::as_str);
        let listed: Vec<u32> = match (ns, list_xml) {
            (_, None) => Vec::new(),
            (NS_V03, Some(x)) => DeviceListV03::parse(x).map_err(bad_xml)?.devices,
            (_, Some(x)) => DeviceListV2::parse(x)
                .map_err(bad_xml)?
                .devices
                .iter()
                .map(|d| d.id)
                .collect(),
        };
        if list_xml.is_some() && !listed.contains(&device_id) {
            return Err(Failure::new(
                "bad_request",
                "the device list lacks device_id",
            ));
        }
        let mut all = if ns == NS_V03 {
            let bundle = BundleV03::parse(bundle_xml).map_err(bad_xml)?;
            let dev = self.v03()?;
            dev.add_bundle(&jid, device_id, bundle)?;
            dev.devices_of(&jid)
        } else {
            let bundle = BundleV2::parse(bundle_xml).map_err(bad_xml)?;
            let dev = self.v2()?;
            dev.add_bundle(&jid, device_id, &bundle)?;
            dev.devices_of(&jid)
        };
        all.extend(listed);
        if ns == NS_V03 {
            self.v03()?.set_device_list(&jid, all);
        } else {
            self.v2()?.set_device_list(&jid, all);
        }
        Ok(json!({}))
    }

    fn encrypt(&mut self, req: &Value) -> Reply {
        let ns = self.namespace(req)?;
        let to = str_field(req, "to_jid")?.to_owned();
        let plaintext = b64_field(req, "plaintext_b64")?;
        let xml = if ns == NS_V03 {
            self.v03()?.encrypt(&to, &plaintext, &mut OsRng)?.to_xml()
        } else {
            let body = String::from_utf8(plaintext)
                .map_err(|_| Failure::new("bad_request", "OMEMO 2 bodies are UTF-8"))?;
            self.v2()?.encrypt(&to, &body, &mut OsRng)?.to_xml()
        };
        Ok(json!({"xml": xml}))
    }

    fn decrypt(&mut self, req: &Value) -> Reply {
        let ns = self.namespace(req)?;
        let from = str_field(req, "from_jid")?.to_owned();
        let xml = str_field(req, "xml")?;
        // An empty message answers a key exchange (so the sender stops sending them) or is a
        // heartbeat; the device says when one is due.
        let (d, reply) = if ns == NS_V03 {
            let element = EncryptedV03::parse(xml).map_err(bad_xml)?;
            let dev = self.v03()?;
            let d = dev.decrypt(&from, &element, &mut OsRng)?;
            let reply = d.send_empty.then(|| {
                dev.empty_message(&from, d.sender_device, &mut OsRng)
                    .map(|e| e.to_xml())
            });
            (d, reply)
        } else {
            let element = EncryptedV2::parse(xml).map_err(bad_xml)?;
            let dev = self.v2()?;
            let d = dev.decrypt(&from, &element, &mut OsRng)?;
            let reply = d.send_empty.then(|| {
                dev.empty_message(&from, d.sender_device, &mut OsRng)
                    .map(|e| e.to_xml())
            });
            (d, reply)
        };
        match reply {
            Some(Ok(xml)) => self
                .outbox
                .push(json!({"to_jid": from, "ns": ns, "xml": xml})),
            Some(Err(e)) => eprintln!("omemo_peer: no empty message for {from}: {e}"),
            None => {}
        }
        Ok(match d.plaintext {
            Some(p) => json!({"plaintext_b64": B64.encode(p), "empty": false}),
            None => json!({"plaintext_b64": null, "empty": true}),
        })
    }
}

fn encrypt_file(req: &Value) -> Reply {
    let https = str_field(req, "https_url")?;
    let plaintext = b64_field(req, "plaintext_b64")?;
    let (ciphertext, key, iv) = media::encrypt_file(&plaintext, &mut OsRng);
    let url = AesgcmUrl::from_https(https, key, &iv)
        .map_err(|e| Failure::new("bad_request", e.to_string()))?;
    Ok(json!({"url": url.to_string(), "ciphertext_b64": B64.encode(ciphertext)}))
}

fn decrypt_file(req: &Value) -> Reply {
    let url = AesgcmUrl::parse(str_field(req, "url")?)
        .map_err(|e| Failure::new("bad_url", e.to_string()))?;
    let ciphertext = b64_field(req, "ciphertext_b64")?;
    let plaintext = url
        .decrypt(&ciphertext)
        .map_err(|e| Failure::new("decryption_failed", e.to_string()))?;
    Ok(json!({"plaintext_b64": B64.encode(plaintext)}))
}

fn main() {
    let mut peer = Peer {
        jid: String::new(),
        device_id: 0,
        v03: None,
        v2: None,
        outbox: Vec::new(),
    };
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let (id, cmd, reply) = match serde_json::from_str::<Value>(&line) {
            Ok(req) => {
                let id = req.get("id").cloned().unwrap_or(Value::Null);
                let cmd = req
                    .get("cmd")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                let reply = peer.handle(&cmd, &req);
                (id, cmd, reply)
            }
            Err(e) => (
                Value::Null,
                String::new(),
                Err(Failure::new("bad_request", e.to_string())),
            ),
        };
        let outbox = std::mem::take(&mut peer.outbox);
        let mut out = match reply {
            Ok(Value::Object(mut m)) => {
                m.insert("ok".into(), Value::Bool(true));
                Value::Object(m)
            }
            Ok(other) => json!({"ok": true, "value": other}),
            Err(Failure(reason, message)) => {
                eprintln!("omemo_peer: {cmd} failed: {reason}: {message}");
                json!({"ok": false, "error": {"reason": reason, "message": message}})
            }
        };
        out["id"] = id;
        out["outbox"] = Value::Array(outbox);
        let written = writeln!(stdout, "{out}").and_then(|()| stdout.flush());
        if written.is_err() || cmd == "shutdown" {
            break;
        }
    }
}
