//! The interop registry and consent on SQLite (schema 14; consent's change counter, 17).

use rusqlite::{Connection, OptionalExtension, params};

use super::{SqliteStore, exists};
use crate::interop::{join_words, split_words};
use crate::{
    AuditEntry, AuditNote, Consent, ConsentStore, InboxMode, Provider, ProviderStatus,
    ProviderStore, Result, Scope, StoreError, TermsAcceptance,
};

/// An owned copy of an [`AuditNote`], to travel to the writer thread.
struct Note {
    at_ms: i64,
    actor: String,
    action: String,
    detail: String,
}

impl Note {
    fn of(n: &AuditNote<'_>) -> Self {
        Note {
            at_ms: n.at_ms,
            actor: n.actor.to_owned(),
            action: n.action.to_owned(),
            detail: n.detail.to_owned(),
        }
    }
}

fn backend(what: &str, value: &str) -> StoreError {
    StoreError::Backend(format!(
        "unreadable {what} in the provider registry: {value:?}"
    ))
}

/// Writes the provider's row and its domains (the caller removed the old ones).
fn write_provider(c: &Connection, p: &Provider) -> Result<()> {
    let scopes: Vec<&str> = p.scopes.iter().map(|s| s.as_str()).collect();
    c.execute(
        "INSERT OR REPLACE INTO providers (id, name, status, terms_version, terms_ms, terms_by,
             issuer, jwks, cert_pins, scopes, rate, user_rate, link)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        params![
            p.id,
            p.name,
            p.status.as_str(),
            p.terms.as_ref().map(|t| &t.version),
            p.terms.as_ref().map(|t| t.accepted_ms),
            p.terms.as_ref().map(|t| &t.accepted_by),
            p.issuer,
            p.jwks,
            join_words(&p.cert_pins),
            join_words(&scopes),
            p.rate_per_sec,
            p.user_rate_per_sec,
            p.link,
        ],
    )?;
    for (pos, d) in p.domains.iter().enumerate() {
        let owner: Option<String> = c
            .query_row(
                "SELECT provider FROM provider_domains WHERE domain = ?1",
                [d],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(other) = owner {
            return Err(StoreError::Conflict(format!(
                "the domain {d} belongs to the provider {other}"
            )));
        }
        c.execute(
            "INSERT INTO provider_domains (domain, provider, pos) VALUES (?1, ?2, ?3)",
            params![d, p.id, pos as i64],
        )?;
    }
    Ok(())
}

fn audit(c: &Connection, provider: &str, n: &Note) -> Result<()> {
    c.execute(
        "INSERT INTO provider_audit (at_ms, provider, actor, action, detail)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![n.at_ms, provider, n.actor, n.action, n.detail],
    )?;
    Ok(())
}

fn provider_exists(c: &Connection, id: &str) -> Result<bool> {
    Ok(
        c.query_row("SELECT 1 FROM providers WHERE id = ?1", [id], |_| Ok(()))
            .optional()?
            .is_some(),
    )
}

/// Reads providers (all, or the one with `id`).
fn read_providers(c: &Connection, id: Option<&str>) -> Result<Vec<Provider>> {
    let mut st = c.prepare_cached(
        "SELECT id, name, status, terms_version, terms_ms, terms_by, issuer, jwks, cert_pins,
                scopes, rate, user_rate, link
         FROM providers WHERE ?1 IS NULL OR id = ?1 ORDER BY id",
    )?;
    type Row = (
        Provider,
        String,
        String,
        (Option<String>, Option<i64>, Option<String>),
    );
    let rows = st.query_map([id], |r| -> rusqlite::Result<Row> {
        let p = Provider {
            id: r.get(0)?,
            name: r.get(1)?,
            domains: Vec::new(),
            status: ProviderStatus::Pending,
            terms: None,
            issuer: r.get(6)?,
            jwks: r.get(7)?,
            cert_pins: split_words(&r.get::<_, String>(8)?),
            scopes: Vec::new(),
            rate_per_sec: r.get(10)?,
            user_rate_per_sec: r.get(11)?,
            link: r.get(12)?,
        };
        Ok((p, r.get(2)?, r.get(9)?, (r.get(3)?, r.get(4)?, r.get(5)?)))
    })?;
    let mut out = Vec::new();
    let mut domains =
        c.prepare_cached("SELECT domain FROM provider_domains WHERE provider = ?1 ORDER BY pos")?;
    for row in rows {
        let (mut p, status, scopes, terms) = row?;
        p.status = ProviderStatus::parse(&status).ok_or_else(|| backend("status", &status))?;
        p.scopes = split_words(&scopes)
            .iter()
            .map(|s| Scope::parse(s).ok_or_else(|| backend("scope", s)))
            .collect::<Result<_>>()?;
        p.terms = match terms {
            (Some(version), Some(accepted_ms), Some(accepted_by)) => Some(TermsAcceptance {
                version,
                accepted_ms,
                accepted_by,
            }),
            _ => None,
        };
        p.domains = domains
            .query_map([&p.id], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        out.push(p);
    }
    Ok(out)
}

impl ProviderStore for SqliteStore {
    fn provider_add(&self, p: &Provider, note: &AuditNote<'_>) -> Result<()> {
        let (p, note) = (p.clone(), Note::of(note));
        self.write(move |c| {
            if provider_exists(c, &p.id)? {
                return Err(StoreError::Conflict(format!(
                    "the provider {} already exists",
                    p.id
                )));
            }
            write_provider(c, &p)?;
            audit(c, &p.id, &note)
        })
    }

    fn provider_update(&self, p: &Provider, note: &AuditNote<'_>) -> Result<()> {
        let (p, note) = (p.clone(), Note::of(note));
        self.write(move |c| {
            if !provider_exists(c, &p.id)? {
                return Err(StoreError::NotFound(format!("provider {}", p.id)));
            }
            c.execute("DELETE FROM provider_domains WHERE provider = ?1", [&p.id])?;
            write_provider(c, &p)?;
            audit(c, &p.id, &note)
        })
    }

    fn provider(&self, id: &str) -> Result<Option<Provider>> {
        let id = id.to_owned();
        self.read(move |c| Ok(read_providers(c, Some(&id))?.pop()))
    }

    fn providers(&self) -> Result<Vec<Provider>> {
        self.read(|c| read_providers(c, None))
    }

    fn provider_audit(&self, provider: Option<&str>, limit: usize) -> Result<Vec<AuditEntry>> {
        let provider = provider.map(str::to_owned);
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT seq, at_ms, provider, actor, action, detail FROM provider_audit
                 WHERE ?1 IS NULL OR provider = ?1 ORDER BY seq DESC LIMIT ?2",
            )?;
            let rows = st.query_map(params![provider, limit as i64], |r| {
                Ok(AuditEntry {
                    seq: r.get(0)?,
                    at_ms: r.get(1)?,
                    provider: r.get(2)?,
                    actor: r.get(3)?,
                    action: r.get(4)?,
                    detail: r.get(5)?,
                })
            })?;
            let mut v = rows.collect::<rusqlite::Result<Vec<_>>>()?;
            v.reverse();
            Ok(v)
        })
    }

    fn registry_version(&self) -> Result<i64> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT COALESCE(MAX(seq), 0) FROM provider_audit",
                [],
                |r| r.get(0),
            )?)
        })
    }
}

impl ConsentStore for SqliteStore {
    fn consent(&self, owner: &str) -> Result<Consent> {
        let owner = owner.to_owned();
        self.read(move |c| {
            let row: Option<(bool, String, String, i64)> = c
                .prepare_cached(
                    "SELECT enabled, inbox, providers, updated_ms FROM consent WHERE owner = ?1",
                )?
                .query_row([&owner], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .optional()?;
            let Some((enabled, inbox, providers, updated_ms)) = row else {
                return Ok(Consent::default());
            };
            Ok(Consent {
                enabled,
                inbox: InboxMode::parse(&inbox).ok_or_else(|| backend("inbox", &inbox))?,
                providers: split_words(&providers),
                updated_ms,
            })
        })
    }

    fn set_consent(&self, owner: &str, consent: &Consent) -> Result<()> {
        let (owner, consent) = (owner.to_owned(), consent.clone().normalized());
        self.write(move |c| {
            if !exists(c, &owner)? {
                return Err(StoreError::NotFound(owner));
            }
            c.execute(
                "INSERT OR REPLACE INTO consent (owner, enabled, inbox, providers, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    owner,
                    consent.enabled,
                    consent.inbox.as_str(),
                    join_words(&consent.providers),
                    consent.updated_ms
                ],
            )?;
            c.prepare_cached("UPDATE consent_version SET v = v + 1")?
                .execute([])?;
            Ok(())
        })
    }

    fn consent_version(&self) -> Result<i64> {
        self.read(|c| {
            Ok(c.prepare_cached("SELECT v FROM consent_version")?
                .query_row([], |r| r.get(0))?)
        })
    }
}
