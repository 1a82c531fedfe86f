//! Abuse reports on SQLite (schema 16).

use rusqlite::{Connection, OptionalExtension, params};

use super::{SqliteStore, exists};
use crate::{
    AbuseReport, Evidence, EvidenceMessage, ReportClosure, ReportCounts, ReportFilter,
    ReportReason, ReportStore, Result, StoreError,
};

const COLUMNS: &str = "id, at_ms, reporter, reported, provider, reason, text, closed_ms, \
                       closed_by, closed_note";

fn read_report(c: &Connection, r: &rusqlite::Row<'_>) -> Result<AbuseReport> {
    let id: i64 = r.get(0)?;
    let reason: String = r.get(5)?;
    let closed_ms: Option<i64> = r.get(7)?;
    let mut report = AbuseReport {
        id,
        at_ms: r.get(1)?,
        reporter: r.get(2)?,
        reported: r.get(3)?,
        provider: r.get(4)?,
        reason: ReportReason::parse(&reason).ok_or_else(|| {
            StoreError::Backend(format!(
                "unreadable reason in the abuse reports: {reason:?}"
            ))
        })?,
        text: r.get(6)?,
        evidence: Vec::new(),
        closed: match closed_ms {
            Some(at_ms) => Some(ReportClosure {
                at_ms,
                by: r.get::<_, Option<String>>(8)?.unwrap_or_default(),
                note: r.get::<_, Option<String>>(9)?.unwrap_or_default(),
            }),
            None => None,
        },
    };
    let mut s = c.prepare_cached(
        "SELECT stanza_id, found, at_ms, sender, from_reported, origin, encrypted, bytes
         FROM abuse_evidence WHERE report = ?1 ORDER BY seq",
    )?;
    let rows = s.query_map([id], |r| {
        let found: bool = r.get(1)?;
        Ok(Evidence {
            stanza_id: r.get(0)?,
            found: if found {
                Some(EvidenceMessage {
                    at_ms: r.get::<_, Option<i64>>(2)?.unwrap_or(0),
                    from: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                    from_reported: r.get::<_, Option<bool>>(4)?.unwrap_or(false),
                    origin: r.get(5)?,
                    encrypted: r.get::<_, Option<bool>>(6)?.unwrap_or(false),
                    bytes: r.get::<_, Option<i64>>(7)?.unwrap_or(0).max(0) as usize,
                })
            } else {
                None
            },
        })
    })?;
    report.evidence = rows.collect::<rusqlite::Result<_>>()?;
    Ok(report)
}

fn query(c: &Connection, sql: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<AbuseReport>> {
    let mut s = c.prepare(sql)?;
    let mut rows = s.query(args)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(read_report(c, r)?);
    }
    Ok(out)
}

impl ReportStore for SqliteStore {
    fn report_add(&self, report: &AbuseReport) -> Result<i64> {
        let r = report.clone();
        self.write(move |c| {
            if !exists(c, &r.reporter)? {
                return Err(StoreError::NotFound(r.reporter));
            }
            c.execute(
                "DELETE FROM abuse_reports
                 WHERE reporter = ?1 AND reported = ?2 AND closed_ms IS NULL",
                params![r.reporter, r.reported],
            )?;
            c.execute(
                "INSERT INTO abuse_reports (at_ms, reporter, reported, provider, reason, text)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    r.at_ms,
                    r.reporter,
                    r.reported,
                    r.provider,
                    r.reason.as_str(),
                    r.text
                ],
            )?;
            let id = c.last_insert_rowid();
            let mut s = c.prepare_cached(
                "INSERT INTO abuse_evidence
                 (report, seq, stanza_id, found, at_ms, sender, from_reported, origin,
                  encrypted, bytes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            for (seq, e) in r.evidence.iter().enumerate() {
                let f = e.found.as_ref();
                s.execute(params![
                    id,
                    seq as i64,
                    e.stanza_id,
                    f.is_some(),
                    f.map(|m| m.at_ms),
                    f.map(|m| m.from.as_str()),
                    f.map(|m| m.from_reported),
                    f.and_then(|m| m.origin.as_deref()),
                    f.map(|m| m.encrypted),
                    f.map(|m| m.bytes as i64),
                ])?;
            }
            Ok(id)
        })
    }

    fn reports(&self, filter: &ReportFilter) -> Result<Vec<AbuseReport>> {
        let f = filter.clone();
        self.read(move |c| {
            let mut sql = format!(
                "SELECT {COLUMNS} FROM abuse_reports
                 WHERE (?1 IS NULL OR provider = ?1) AND (?2 = 0 OR closed_ms IS NULL)
                   AND (?3 IS NULL OR at_ms >= ?3)
                 ORDER BY id DESC"
            );
            if f.limit > 0 {
                sql.push_str(&format!(" LIMIT {}", f.limit));
            }
            let mut out = query(c, &sql, &[&f.provider, &f.open_only, &f.since_ms])?;
            out.reverse();
            Ok(out)
        })
    }

    fn report(&self, id: i64) -> Result<Option<AbuseReport>> {
        self.read(move |c| {
            let sql = format!("SELECT {COLUMNS} FROM abuse_reports WHERE id = ?1");
            Ok(query(c, &sql, &[&id])?.pop())
        })
    }

    fn reports_by_since(&self, reporter: &str, since_ms: i64) -> Result<usize> {
        let reporter = reporter.to_owned();
        self.read(move |c| {
            let n: i64 = c
                .prepare_cached(
                    "SELECT COUNT(*) FROM abuse_reports WHERE reporter = ?1 AND at_ms >= ?2",
                )?
                .query_row(params![reporter, since_ms], |r| r.get(0))?;
            Ok(n as usize)
        })
    }

    fn report_counts(&self, provider: &str, since_ms: i64) -> Result<ReportCounts> {
        let provider = provider.to_owned();
        self.read(move |c| {
            let (open, open_reported, recent): (i64, i64, i64) = c
                .prepare_cached(
                    "SELECT COUNT(CASE WHEN closed_ms IS NULL THEN 1 END),
                            COUNT(DISTINCT CASE WHEN closed_ms IS NULL THEN reported END),
                            COUNT(CASE WHEN at_ms >= ?2 THEN 1 END)
                     FROM abuse_reports WHERE provider = ?1",
                )?
                .query_row(params![provider, since_ms], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
            Ok(ReportCounts {
                open: open as usize,
                open_reported: open_reported as usize,
                recent: recent as usize,
            })
        })
    }

    fn report_close(&self, id: i64, closure: &ReportClosure) -> Result<()> {
        let cl = closure.clone();
        self.write(move |c| {
            let closed: Option<Option<i64>> = c
                .query_row(
                    "SELECT closed_ms FROM abuse_reports WHERE id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .optional()?;
            match closed {
                None => Err(StoreError::NotFound(format!("report {id}"))),
                Some(Some(_)) => Err(StoreError::Conflict(format!(
                    "report {id} is already closed"
                ))),
                Some(None) => {
                    c.execute(
                        "UPDATE abuse_reports SET closed_ms = ?2, closed_by = ?3, closed_note = ?4
                         WHERE id = ?1",
                        params![id, cl.at_ms, cl.by, cl.note],
                    )?;
                    Ok(())
                }
            }
        })
    }
}
