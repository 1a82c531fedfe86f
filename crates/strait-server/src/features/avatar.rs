//! User Avatar to vCard-Based Avatars Conversion (XEP-0398): one avatar, whichever way a
//! client sets or reads it.
//!
//! - PEP to vCard: when the owner publishes `urn:xmpp:avatar:metadata`, the server takes the
//!   image its first `info` without a `url` names from `urn:xmpp:avatar:data`, checks its
//!   SHA-1 against the id, and puts it into the vCard as `PHOTO`; an empty metadata item
//!   (avatar removed) removes the `PHOTO`. A vCard is readable by anyone (XEP-0054), so this
//!   happens only when the data node's access model is `open`: an avatar published for
//!   contacts only stays theirs (XEP-0398 §6 allows exactly this).
//! - vCard to PEP: a vCard set with a `PHOTO` publishes the image to both avatar nodes (open,
//!   like the vCard itself, when they are new); a vCard set without one, replacing one that
//!   had a photo, publishes empty metadata.
//! - Presence: every available presence the user sends gets `<x xmlns='vcard-temp:x:update'>`
//!   with the photo's hash, unless it already carries a `<photo/>` (XEP-0398 §4).

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use minidom::Element;
use sha1::{Digest, Sha1};
use strait_store::PepNodeConfig;
use strait_wire::{Stanza, ns};

use super::attr;
use crate::server::ServerState;
use strait_wire::escape_text;

pub const NS: &str = "urn:xmpp:pep-vcard-conversion:0";
pub const NODE_DATA: &str = "urn:xmpp:avatar:data";
pub const NODE_METADATA: &str = "urn:xmpp:avatar:metadata";
const VCARD: &str = "vcard-temp";
const UPDATE: &str = "vcard-temp:x:update";
/// Accounts whose photo hash is cached; past it the cache starts over.
const CACHE_MAX: usize = 65_536;

/// The photo hashes of accounts that have a vCard photo, as far as known. Accounts without
/// one are not kept (most have none, and an idle connection should cost no memory here):
/// their presence costs a vCard read instead.
#[derive(Default)]
pub struct HashCache(Mutex<HashMap<String, String>>);

impl HashCache {
    fn get(&self, bare: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(bare)
            .cloned()
    }

    fn set(&self, bare: &str, hash: Option<String>) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match hash {
            Some(h) => {
                if g.len() >= CACHE_MAX && !g.contains_key(bare) {
                    g.clear();
                }
                g.insert(bare.to_owned(), h);
            }
            None => {
                g.remove(bare);
            }
        }
    }
}

fn sha1_hex(bytes: &[u8]) -> String {
    Sha1::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Base64 as vCards and avatar items carry it: possibly wrapped over lines.
fn decode(text: &str) -> Option<Vec<u8>> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    B64.decode(compact).ok()
}

/// The photo of a vCard: (type, bytes).
fn vcard_photo(vcard: &Element) -> Option<(String, Vec<u8>)> {
    let photo = vcard.get_child("PHOTO", VCARD)?;
    let bytes = decode(&photo.get_child("BINVAL", VCARD)?.text())?;
    if bytes.is_empty() {
        return None;
    }
    let ty = photo
        .get_child("TYPE", VCARD)
        .map(|t| t.text().trim().to_owned())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "image/png".into());
    Some((ty, bytes))
}

/// Canonical XML of an element (re-serialized, never a client's bytes).
fn canonical(el: &Element) -> String {
    let mut st = Stanza::new(ns::CLIENT, "x");
    st.push_child(el);
    st.inner_xml().to_owned()
}

async fn stored_vcard(state: &ServerState, bare: &str) -> Option<Element> {
    let b = bare.to_owned();
    match state.store(move |st| st.vcard(&b)).await {
        Ok(Some(xml)) => xml.parse::<Element>().ok(),
        Ok(None) => None,
        Err(e) => {
            tracing::error!(account = %bare, "reading the vCard: {e}");
            None
        }
    }
}

/// The account's photo hash: cached, or read from its vCard once.
pub async fn photo_hash(state: &ServerState, bare: &str) -> Option<String> {
    if let Some(h) = state.avatar_hashes.get(bare) {
        return Some(h);
    }
    let hash = stored_vcard(state, bare)
        .await
        .and_then(|v| vcard_photo(&v))
        .map(|(_, bytes)| sha1_hex(&bytes));
    state.avatar_hashes.set(bare, hash.clone());
    hash
}

/// Puts the photo hash into an available presence from `bare` (XEP-0398 §4): added when
/// there is no `vcard-temp:x:update`, or one without a `<photo/>`; a client's own `<photo/>`
/// (empty or not) is left alone.
pub async fn stamp_presence(state: &ServerState, bare: &str, p: &mut Stanza) {
    if p.type_.is_some() {
        return;
    }
    if let Some(x) = p.child_xml(UPDATE, "x")
        && x.contains("<photo")
    {
        return;
    }
    let Some(hash) = photo_hash(state, bare).await else {
        return;
    };
    p.remove_children(|c| c.ns == UPDATE && c.name == "x");
    p.push_child_xml(&format!("<x xmlns='{UPDATE}'><photo>{hash}</photo></x>"));
}

/// PEP to vCard, after the owner published `metadata` to `urn:xmpp:avatar:metadata`.
pub async fn metadata_published(state: &ServerState, owner: &str, metadata: &Element) {
    let infos: Vec<&Element> = metadata
        .children()
        .filter(|c| c.is("info", NODE_METADATA))
        .collect();
    if infos.is_empty() {
        // The avatar was removed.
        set_vcard_photo(state, owner, None).await;
        return;
    }
    let Some(info) = infos.iter().find(|i| i.attr("url").is_none()) else {
        return; // only external images: nothing to copy
    };
    let Some(id) = info.attr("id").map(str::to_ascii_lowercase) else {
        return;
    };
    let ty = info.attr("type").unwrap_or("image/png").to_owned();
    let (o, n) = (owner.to_owned(), NODE_DATA.to_owned());
    let data_config = state.store(move |st| st.pep_node(&o, &n)).await;
    match data_config {
        Ok(Some(c)) if c.access_model == "open" => {}
        Ok(_) => {
            tracing::debug!(account = %owner, "avatar not copied to the vCard: its data node is not open");
            return;
        }
        Err(e) => {
            tracing::error!(account = %owner, "reading the avatar data node: {e}");
            return;
        }
    }
    let (o, n, ids) = (owner.to_owned(), NODE_DATA.to_owned(), vec![id.clone()]);
    let items = match state
        .store(move |st| st.pep_items(&o, &n, Some(&ids), None))
        .await
    {
        Ok(items) => items,
        Err(e) => {
            tracing::error!(account = %owner, "reading the avatar data: {e}");
            return;
        }
    };
    let Some(bytes) = items
        .first()
        .and_then(|i| i.payload.parse::<Element>().ok())
        .filter(|d| d.is("data", NODE_DATA))
        .and_then(|d| decode(&d.text()))
    else {
        tracing::debug!(account = %owner, %id, "avatar metadata names no stored image");
        return;
    };
    if sha1_hex(&bytes) != id {
        tracing::info!(account = %owner, %id, "avatar not copied to the vCard: its SHA-1 is not its id");
        return;
    }
    set_vcard_photo(state, owner, Some((ty, bytes))).await;
}

/// Replaces (or removes) the vCard's `PHOTO`, keeping everything else in it.
async fn set_vcard_photo(state: &ServerState, owner: &str, photo: Option<(String, Vec<u8>)>) {
    let mut vcard = match stored_vcard(state, owner).await {
        Some(v) => v,
        None if photo.is_none() => return,
        None => Element::builder("vCard", VCARD).build(),
    };
    let had = vcard.get_child("PHOTO", VCARD).is_some();
    if !had && photo.is_none() {
        return;
    }
    while vcard.remove_child("PHOTO", VCARD).is_some() {}
    let hash = photo.as_ref().map(|(_, b)| sha1_hex(b));
    if let Some((ty, bytes)) = &photo {
        let xml = format!(
            "<PHOTO xmlns='{VCARD}'><TYPE>{}</TYPE><BINVAL>{}</BINVAL></PHOTO>",
            escape_text(ty),
            B64.encode(bytes)
        );
        match xml.parse::<Element>() {
            Ok(p) => vcard.append_child(p),
            Err(_) => return,
        };
    }
    let xml = canonical(&vcard);
    let o = owner.to_owned();
    match state.store(move |st| st.set_vcard(&o, Some(&xml))).await {
        Ok(()) => state.avatar_hashes.set(owner, hash),
        Err(e) => tracing::error!(account = %owner, "storing the converted vCard: {e}"),
    }
}

/// vCard to PEP, after the owner stored `vcard` (`previous`: the vCard it replaced).
pub async fn vcard_stored(
    state: &ServerState,
    owner: &str,
    vcard: Option<&Element>,
    previous_hash: Option<String>,
) {
    let photo = vcard.and_then(vcard_photo);
    let hash = photo.as_ref().map(|(_, b)| sha1_hex(b));
    state.avatar_hashes.set(owner, hash.clone());
    if hash == previous_hash {
        return; // the same picture (or still none): nothing to publish
    }
    let open = PepNodeConfig {
        access_model: "open".into(),
        ..PepNodeConfig::default()
    };
    let metadata = match (&photo, &hash) {
        (Some((ty, bytes)), Some(h)) => {
            let data = format!("<data xmlns='{NODE_DATA}'>{}</data>", B64.encode(bytes));
            if let Err(e) = super::pep::publish_for(state, owner, NODE_DATA, h, &data, &open).await
            {
                tracing::error!(account = %owner, "publishing the vCard's photo: {e}");
                return;
            }
            format!(
                "<metadata xmlns='{NODE_METADATA}'><info{}{}{}/></metadata>",
                attr("bytes", &bytes.len().to_string()),
                attr("id", h),
                attr("type", ty)
            )
        }
        _ => format!("<metadata xmlns='{NODE_METADATA}'/>"),
    };
    let id = hash.unwrap_or_else(|| "current".into());
    if let Err(e) =
        super::pep::publish_for(state, owner, NODE_METADATA, &id, &metadata, &open).await
    {
        tracing::error!(account = %owner, "publishing the vCard's avatar metadata: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn photo_from_a_wrapped_vcard() {
        let v: Element = "<vCard xmlns='vcard-temp'><FN>A</FN><PHOTO><TYPE>image/jpeg</TYPE>\
                          <BINVAL>aGVs\n bG8=</BINVAL></PHOTO></vCard>"
            .parse()
            .unwrap();
        let (ty, bytes) = vcard_photo(&v).unwrap();
        assert_eq!(
            (ty.as_str(), bytes.as_slice()),
            ("image/jpeg", &b"hello"[..])
        );
        // SHA-1 of "hello" (FIPS 180 test tools; also `printf hello | sha1sum`).
        assert_eq!(sha1_hex(&bytes), "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d");
        let none: Element = "<vCard xmlns='vcard-temp'><PHOTO><BINVAL/></PHOTO></vCard>"
            .parse()
            .unwrap();
        assert!(vcard_photo(&none).is_none());
    }
}
