//! Files shared as XEP-0454 media: encrypted with a fresh key, the ciphertext uploaded to the
//! server's XEP-0363 service (found through disco), the `aesgcm://` link (which carries the
//! key) sent inside an encrypted message; and the way back.

use super::{ChatError, Client, Sent, error_of};
use crate::conn::ConnError;
use crate::https::HttpsError;
use crate::xml::{Element, decode};
use rand_core::OsRng;
use strait_signal::media::{self, AesgcmUrl, MediaError};

const NS_UPLOAD: &str = "urn:xmpp:http:upload:0";
const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
/// The largest shared file [`Client::download`] takes.
pub const MAX_DOWNLOAD: usize = 512 << 20;

/// A shared file (XEP-0454): where its ciphertext is and the key, from an encrypted message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Media {
    pub url: AesgcmUrl,
    /// The file's name, from the link (the last path segment, percent-decoded).
    pub name: String,
}

impl Client {
    /// Shares a file with `to` (XEP-0454, see the module documentation): encrypted, uploaded,
    /// and its link sent in an encrypted message.
    pub async fn send_file(
        &mut self,
        to: &str,
        name: &str,
        data: &[u8],
    ) -> Result<Sent, ChatError> {
        let (service, max) = self.upload_service().await?;
        let (ciphertext, key, iv) = media::encrypt_file(data, &mut OsRng);
        let size = ciphertext.len() as u64;
        if let Some(max) = max.filter(|m| size > *m) {
            return Err(ChatError::Upload(format!(
                "{name} is {size} bytes encrypted; {service} takes at most {max}"
            )));
        }
        let raw = self
            .iq(|id| {
                format!(
                    "<iq type='get' id='{id}' to='{}'><request xmlns='{NS_UPLOAD}' filename='{}' size='{size}' content-type='application/octet-stream'/></iq>",
                    crate::xml::escape(&service),
                    crate::xml::escape(name)
                )
            })
            .await?;
        let el = Element::parse(&raw).ok_or(ConnError::Protocol("unparsable answer".into()))?;
        if el.attr("type").as_deref() != Some("result") {
            let (condition, text) = error_of(&raw);
            return Err(ChatError::Upload(format!(
                "{service} gave no slot: {condition}{}",
                text.map(|t| format!(" ({t})")).unwrap_or_default()
            )));
        }
        let slot = el
            .child("slot")
            .ok_or_else(|| ChatError::Upload("the answer holds no slot".into()))?;
        let put = slot.child("put");
        let (Some(put_url), Some(get_url)) = (
            put.and_then(|p| p.attr("url")).map(|u| u.into_owned()),
            slot.child("get")
                .and_then(|g| g.attr("url"))
                .map(|u| u.into_owned()),
        ) else {
            return Err(ChatError::Upload(
                "the slot lacks its put or get URL".into(),
            ));
        };
        // XEP-0363 §5: only these headers may come from the slot.
        let headers: Vec<(String, String)> = put
            .map(|p| {
                p.children()
                    .filter(|h| h.is("header"))
                    .filter_map(|h| {
                        let n = h.attr("name")?.into_owned();
                        ["Authorization", "Cookie", "Expires"]
                            .iter()
                            .any(|a| a.eq_ignore_ascii_case(&n))
                            .then(|| (n, decode(h.inner()).into_owned()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.https
            .put(&put_url, &headers, "application/octet-stream", ciphertext)
            .await
            .map_err(|e| ChatError::Upload(e.to_string()))?;
        let link = AesgcmUrl::from_https(&get_url, key, &iv)
            .map_err(|e: MediaError| ChatError::Upload(format!("the slot's URL: {e}")))?;
        self.send(to, &link.to_string()).await
    }

    /// Fetches and decrypts a shared file.
    pub async fn download(&self, media: &Media) -> Result<Vec<u8>, ChatError> {
        let url = media.url.https_url();
        let ciphertext = self
            .https
            .get(&url, MAX_DOWNLOAD)
            .await
            .map_err(|e: HttpsError| ChatError::Download(e.to_string()))?;
        media
            .url
            .decrypt(&ciphertext)
            .map_err(|e| ChatError::Download(format!("{url}: {e}")))
    }

    /// The server's XEP-0363 service (found through disco once) and its size limit.
    async fn upload_service(&mut self) -> Result<(String, Option<u64>), ChatError> {
        if let Some(u) = &self.upload {
            return Ok(u.clone());
        }
        let domain = self
            .jid
            .rsplit_once('@')
            .map(|(_, d)| d.to_owned())
            .unwrap_or_default();
        let raw = self
            .iq(|id| {
                format!(
                    "<iq type='get' id='{id}' to='{}'><query xmlns='{NS_DISCO_ITEMS}'/></iq>",
                    crate::xml::escape(&domain)
                )
            })
            .await?;
        let items: Vec<String> = Element::parse(&raw)
            .and_then(|el| el.child("query"))
            .map(|q| {
                q.children()
                    .filter(|i| i.is("item"))
                    .filter_map(|i| i.attr("jid").map(|j| j.into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        // The domain itself may be the service (as some servers do it).
        for jid in items.iter().map(String::as_str).chain([domain.as_str()]) {
            let raw = self
                .iq(|id| {
                    format!(
                        "<iq type='get' id='{id}' to='{}'><query xmlns='{NS_DISCO_INFO}'/></iq>",
                        crate::xml::escape(jid)
                    )
                })
                .await?;
            let Some(q) = Element::parse(&raw).and_then(|el| el.child("query")) else {
                continue;
            };
            let offers = q
                .children()
                .any(|f| f.is("feature") && f.attr("var").as_deref() == Some(NS_UPLOAD));
            if !offers {
                continue;
            }
            let max = q
                .children()
                .filter(|x| x.is("x"))
                .flat_map(|x| x.children().collect::<Vec<_>>())
                .find(|f| f.is("field") && f.attr("var").as_deref() == Some("max-file-size"))
                .and_then(|f| f.child("value"))
                .and_then(|v| v.text().trim().parse::<u64>().ok());
            let found = (jid.to_owned(), max);
            self.upload = Some(found.clone());
            return Ok(found);
        }
        Err(ChatError::Upload(format!(
            "{domain} offers no file upload service (XEP-0363)"
        )))
    }
}

/// A shared file's name: the link's last path segment, percent-decoded, without any path.
pub(super) fn file_name(url: &AesgcmUrl) -> String {
    let path = url.location.split(['?', '#']).next().unwrap_or_default();
    let last = path.rsplit('/').next().unwrap_or_default();
    let bytes = last.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    let name = String::from_utf8_lossy(&out).replace(['/', '\\', '\0'], "_");
    match name.trim_start_matches('.') {
        "" => "file".into(),
        n => n.to_owned(),
    }
}
