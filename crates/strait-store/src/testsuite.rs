//! One test suite, run against every backend.

use std::sync::Arc;

use crate::{
    AccountStore, Credentials, MemoryStore, OfflineStore, RosterItem, RosterStore, ScramSecret,
    SqliteStore, Store, StoreError, Subscription,
};
use crate::{PepItem, PepNodeConfig};

fn secret(tag: u8) -> ScramSecret {
    ScramSecret {
        salt: vec![tag; 16],
        iterations: 4096 + u32::from(tag),
        stored_key: vec![tag ^ 0x55; 32],
        server_key: vec![tag ^ 0xaa; 32],
    }
}

pub(crate) fn creds(tag: u8) -> Credentials {
    Credentials {
        scram_sha1: Some(ScramSecret {
            stored_key: vec![tag; 20],
            server_key: vec![tag.wrapping_add(1); 20],
            ..secret(tag)
        }),
        scram_sha256: secret(tag),
    }
}

fn item(jid: &str) -> RosterItem {
    RosterItem {
        jid: jid.to_owned(),
        name: Some(format!("name of {jid}")),
        subscription: Subscription::Both,
        ask_out: false,
        pending_in: true,
        groups: vec!["Friends".into(), "Work, mostly\n".into()],
    }
}

pub fn accounts(s: &impl Store) {
    assert!(!s.account_exists("a@x.example").unwrap());
    assert_eq!(s.credentials("a@x.example").unwrap(), None);
    s.create_account("a@x.example", &creds(1)).unwrap();
    assert!(matches!(
        s.create_account("a@x.example", &creds(2)),
        Err(StoreError::AlreadyExists(j)) if j == "a@x.example"
    ));
    // The failed create did not overwrite anything.
    assert_eq!(s.credentials("a@x.example").unwrap(), Some(creds(1)));
    assert!(s.account_exists("a@x.example").unwrap());
    // Stored as given: no case folding.
    assert!(!s.account_exists("A@x.example").unwrap());

    let no_sha1 = Credentials {
        scram_sha1: None,
        scram_sha256: secret(7),
    };
    s.create_account("c@y.example", &no_sha1).unwrap();
    assert_eq!(s.credentials("c@y.example").unwrap(), Some(no_sha1.clone()));
    s.create_account("b@x.example", &creds(3)).unwrap();
    s.create_account("y.example", &creds(4)).unwrap();

    assert_eq!(
        s.list_accounts(None).unwrap(),
        ["a@x.example", "b@x.example", "c@y.example", "y.example"]
    );
    assert_eq!(
        s.list_accounts(Some("x.example")).unwrap(),
        ["a@x.example", "b@x.example"]
    );
    assert_eq!(
        s.list_accounts(Some("y.example")).unwrap(),
        ["c@y.example", "y.example"]
    );
    assert!(s.list_accounts(Some("z.example")).unwrap().is_empty());

    s.set_credentials("c@y.example", &creds(9)).unwrap();
    assert_eq!(s.credentials("c@y.example").unwrap(), Some(creds(9)));
    s.set_credentials("c@y.example", &no_sha1).unwrap();
    assert_eq!(s.credentials("c@y.example").unwrap(), Some(no_sha1));
    assert!(matches!(
        s.set_credentials("nobody@x.example", &creds(1)),
        Err(StoreError::NotFound(j)) if j == "nobody@x.example"
    ));
    assert!(!s.account_exists("nobody@x.example").unwrap());

    s.remove_account("b@x.example").unwrap();
    assert!(!s.account_exists("b@x.example").unwrap());
    assert!(matches!(
        s.remove_account("b@x.example"),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.list_accounts(Some("x.example")).unwrap(), ["a@x.example"]);
}

pub fn roster(s: &impl Store) {
    let o = "owner@x.example";
    assert_eq!(s.roster(o).unwrap(), (0, vec![]));
    assert!(matches!(
        s.roster_set(o, &item("c@y.example")),
        Err(StoreError::NotFound(_))
    ));
    s.create_account(o, &creds(1)).unwrap();
    assert_eq!(s.roster(o).unwrap(), (0, vec![]));
    assert_eq!(s.roster_item(o, "c@y.example").unwrap(), None);

    let v1 = s.roster_set(o, &item("c@y.example")).unwrap();
    let v2 = s.roster_set(o, &item("a@y.example")).unwrap();
    assert!(v2 > v1 && v1 > 0);
    assert_eq!(
        s.roster_item(o, "c@y.example").unwrap(),
        Some(item("c@y.example"))
    );

    // Replace: fewer groups, no name, other flags.
    let replaced = RosterItem {
        name: None,
        subscription: Subscription::To,
        ask_out: true,
        pending_in: false,
        groups: vec![],
        ..item("c@y.example")
    };
    let v3 = s.roster_set(o, &replaced).unwrap();
    assert!(v3 > v2);
    assert_eq!(
        s.roster_item(o, "c@y.example").unwrap(),
        Some(replaced.clone())
    );
    for sub in [Subscription::None, Subscription::From] {
        let it = RosterItem {
            subscription: sub,
            ..item("d@y.example")
        };
        s.roster_set(o, &it).unwrap();
        assert_eq!(s.roster_item(o, "d@y.example").unwrap(), Some(it));
    }

    let (ver, items) = s.roster(o).unwrap();
    assert!(ver > v3);
    let jids: Vec<_> = items.iter().map(|i| i.jid.as_str()).collect();
    assert_eq!(jids, ["a@y.example", "c@y.example", "d@y.example"]);
    assert_eq!(items[1], replaced);

    // Another owner's roster is separate.
    s.create_account("other@x.example", &creds(2)).unwrap();
    assert_eq!(s.roster("other@x.example").unwrap(), (0, vec![]));
    assert_eq!(
        s.roster_item("other@x.example", "a@y.example").unwrap(),
        None
    );

    let v5 = s.roster_remove(o, "a@y.example").unwrap();
    assert!(v5 > ver);
    assert_eq!(s.roster_item(o, "a@y.example").unwrap(), None);
    // Removing an absent item changes nothing.
    assert_eq!(s.roster_remove(o, "a@y.example").unwrap(), v5);
    assert_eq!(s.roster(o).unwrap().0, v5);
    assert_eq!(s.roster(o).unwrap().1.len(), 2);
}

pub fn offline(s: &impl Store) {
    let o = "o@x.example";
    assert_eq!(s.offline_count(o).unwrap(), 0);
    assert!(s.offline_fetch(o, 10).unwrap().is_empty());
    assert!(matches!(
        s.offline_push(o, "<message/>", 1, 10),
        Err(StoreError::NotFound(_))
    ));
    s.create_account(o, &creds(1)).unwrap();
    s.create_account("p@x.example", &creds(2)).unwrap();

    let mut ids = vec![];
    for i in 0..5 {
        ids.push(
            s.offline_push(o, &format!("<message id='{i}'/>"), 1000 + i, 10)
                .unwrap(),
        );
    }
    let other = s.offline_push("p@x.example", "<message/>", 5, 10).unwrap();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    assert!(!ids.contains(&other));
    assert_eq!(s.offline_count(o).unwrap(), 5);
    assert_eq!(s.offline_count("p@x.example").unwrap(), 1);

    let all = s.offline_fetch(o, 100).unwrap();
    assert_eq!(all.len(), 5);
    for (i, m) in all.iter().enumerate() {
        assert_eq!(m.id, ids[i]);
        assert_eq!(m.stanza, format!("<message id='{i}'/>"));
        assert_eq!(m.stamp_ms, 1000 + i as i64);
    }
    let first2 = s.offline_fetch(o, 2).unwrap();
    assert_eq!(first2, all[..2]);
    assert!(s.offline_fetch(o, 0).unwrap().is_empty());
    // Page by page: each after the last id of the one before.
    assert_eq!(
        s.offline_fetch_after(o, first2[1].id, 2).unwrap(),
        all[2..4]
    );
    assert_eq!(s.offline_fetch_after(o, all[3].id, 2).unwrap(), all[4..]);
    assert!(s.offline_fetch_after(o, all[4].id, 2).unwrap().is_empty());
    assert_eq!(s.offline_fetch_after(o, 0, 100).unwrap(), all);

    // Deleting: only the owner's ids, unknown ids ignored.
    s.offline_delete(o, &[ids[0], ids[2], other, 999_999])
        .unwrap();
    s.offline_delete(o, &[]).unwrap();
    assert_eq!(s.offline_count("p@x.example").unwrap(), 1);
    let rest: Vec<_> = s
        .offline_fetch(o, 10)
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(rest, [ids[1], ids[3], ids[4]]);
    // Which are still kept: the owner's own, in the order asked.
    assert_eq!(
        s.offline_kept(o, &[ids[4], ids[0], ids[1], other, 999_999])
            .unwrap(),
        [ids[4], ids[1]]
    );
    assert!(s.offline_kept(o, &[]).unwrap().is_empty());
    assert_eq!(
        s.offline_kept("p@x.example", &[other, ids[1]]).unwrap(),
        [other]
    );

    // Order is by id; new messages go last.
    let late = s.offline_push(o, "<message id='late'/>", 0, 10).unwrap();
    assert_eq!(s.offline_fetch(o, 10).unwrap().last().unwrap().id, late);
    assert!(late > ids[4]);
}

/// Reserved row ids: a push under a reserved id keeps it, messages come back in id order
/// whatever order they were written in, an id is given once (reserved or not), and a taken
/// id is refused.
pub fn offline_reserved_ids(s: &impl Store) {
    use crate::WriteOp;
    let o = "r@x.example";
    s.create_account(o, &creds(1)).unwrap();
    let before = s.offline_push(o, "<message id='0'/>", 1, 10).unwrap();
    let r1 = s.offline_reserve_id().unwrap();
    let r2 = s.offline_reserve_id().unwrap();
    assert!(before < r1 && r1 < r2, "{before} {r1} {r2}");
    let push = |id, name: &str| WriteOp::OfflinePush {
        owner: o.into(),
        stanza: format!("<message id='{name}'/>"),
        stamp_ms: 2,
        limit: usize::MAX,
        id,
    };
    // The later reservation is written first, as two senders' batches can be.
    let out = batch(s, vec![push(Some(r2), "2"), push(Some(r1), "1")]);
    assert!(matches!(out[..], [Ok(Some(a)), Ok(Some(b))] if a == r2 && b == r1));
    let after = s.offline_push(o, "<message id='3'/>", 3, 10).unwrap();
    assert!(
        after > r2,
        "an unreserved push reuses a reserved id: {after} <= {r2}"
    );
    let order: Vec<(i64, String)> = s
        .offline_fetch(o, 10)
        .unwrap()
        .into_iter()
        .map(|m| (m.id, m.stanza))
        .collect();
    assert_eq!(
        order,
        [
            (before, "<message id='0'/>".to_owned()),
            (r1, "<message id='1'/>".to_owned()),
            (r2, "<message id='2'/>".to_owned()),
            (after, "<message id='3'/>".to_owned()),
        ]
    );
    // A taken id is refused and changes nothing.
    let again = batch(s, vec![push(Some(r1), "dup")]);
    assert!(matches!(again[..], [Err(_)]), "{again:?}");
    assert_eq!(s.offline_count(o).unwrap(), 4);
    // Deleted ids are not given again.
    s.offline_delete(o, &[after]).unwrap();
    assert!(s.offline_reserve_id().unwrap() > after);
    assert!(s.offline_push(o, "<message/>", 4, 10).unwrap() > after);
}

pub fn quota(s: &impl Store) {
    let o = "q@x.example";
    s.create_account(o, &creds(1)).unwrap();
    for i in 0..3 {
        s.offline_push(o, "<message/>", i, 3).unwrap();
    }
    match s.offline_push(o, "<message/>", 9, 3) {
        Err(StoreError::QuotaExceeded { account, limit }) => {
            assert_eq!(account, o);
            assert_eq!(limit, 3);
        }
        other => panic!("expected QuotaExceeded, got {other:?}"),
    }
    assert_eq!(s.offline_count(o).unwrap(), 3);
    // A larger limit admits more; zero admits nothing.
    s.offline_push(o, "<message/>", 9, 4).unwrap();
    assert!(matches!(
        s.offline_push(o, "<message/>", 9, 0),
        Err(StoreError::QuotaExceeded { .. })
    ));
    // Room again after a delete.
    let first = s.offline_fetch(o, 1).unwrap()[0].id;
    s.offline_delete(o, &[first]).unwrap();
    s.offline_push(o, "<message/>", 10, 4).unwrap();
    assert_eq!(s.offline_count(o).unwrap(), 4);
}

pub fn removal_cascades(s: &impl Store) {
    let o = "gone@x.example";
    let keep = "keep@x.example";
    s.create_account(o, &creds(1)).unwrap();
    s.create_account(keep, &creds(2)).unwrap();
    s.roster_set(o, &item("c@y.example")).unwrap();
    let ver = s.roster_set(o, &item("d@y.example")).unwrap();
    s.roster_set(keep, &item("c@y.example")).unwrap();
    s.offline_push(o, "<message/>", 1, 10).unwrap();
    s.offline_push(keep, "<message/>", 1, 10).unwrap();

    s.remove_account(o).unwrap();
    assert!(!s.account_exists(o).unwrap());
    assert_eq!(s.credentials(o).unwrap(), None);
    assert!(s.roster(o).unwrap().1.is_empty());
    assert_eq!(s.roster_item(o, "c@y.example").unwrap(), None);
    assert_eq!(s.offline_count(o).unwrap(), 0);
    assert!(s.offline_fetch(o, 10).unwrap().is_empty());
    // Others untouched.
    assert_eq!(s.roster(keep).unwrap().1.len(), 1);
    assert_eq!(s.offline_count(keep).unwrap(), 1);

    // Re-created: empty, and the version never goes back.
    s.create_account(o, &creds(3)).unwrap();
    assert_eq!(s.credentials(o).unwrap(), Some(creds(3)));
    assert!(s.roster(o).unwrap().1.is_empty());
    assert_eq!(s.offline_count(o).unwrap(), 0);
    assert!(s.roster_set(o, &item("e@y.example")).unwrap() > ver);
}

pub fn blocking(s: &impl Store) {
    let o = "owner@x.example";
    let v = |l: &[&str]| l.iter().map(|j| j.to_string()).collect::<Vec<_>>();
    assert!(matches!(
        s.block(o, &v(&["a@y.example"])),
        Err(StoreError::NotFound(_))
    ));
    s.create_account(o, &creds(1)).unwrap();
    assert!(s.blocklist(o).unwrap().is_empty());
    s.block(o, &v(&["b@y.example", "a@y.example", "spam.example"]))
        .unwrap();
    // Blocking again keeps one entry.
    s.block(o, &v(&["a@y.example", "c@y.example/phone"]))
        .unwrap();
    assert_eq!(
        s.blocklist(o).unwrap(),
        v(&[
            "a@y.example",
            "b@y.example",
            "c@y.example/phone",
            "spam.example"
        ])
    );
    s.unblock(o, &v(&["a@y.example", "never@y.example"]))
        .unwrap();
    assert_eq!(
        s.blocklist(o).unwrap(),
        v(&["b@y.example", "c@y.example/phone", "spam.example"])
    );
    // Another owner's list is separate.
    s.create_account("other@x.example", &creds(2)).unwrap();
    s.block("other@x.example", &v(&["z@y.example"])).unwrap();
    s.unblock_all(o).unwrap();
    assert!(s.blocklist(o).unwrap().is_empty());
    assert_eq!(s.blocklist("other@x.example").unwrap(), v(&["z@y.example"]));
    // Removing the account drops its list; a re-created account starts empty.
    s.remove_account("other@x.example").unwrap();
    s.create_account("other@x.example", &creds(2)).unwrap();
    assert!(s.blocklist("other@x.example").unwrap().is_empty());
}

pub fn concurrent_writers<S: Store>(s: Arc<S>) {
    const THREADS: usize = 16;
    const PER_THREAD: usize = 50;
    let o = "busy@x.example";
    s.create_account(o, &creds(1)).unwrap();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                let mut ids = vec![];
                for i in 0..PER_THREAD {
                    ids.push(
                        s.offline_push(o, &format!("<message id='{t}-{i}'/>"), 0, usize::MAX)
                            .unwrap(),
                    );
                    s.roster_set(o, &item(&format!("c{t}-{i}@y.example")))
                        .unwrap();
                    let acct = format!("u{t}-{i}@x.example");
                    s.create_account(&acct, &creds(2)).unwrap();
                    assert!(s.account_exists(&acct).unwrap());
                }
                ids
            })
        })
        .collect();
    let mut all_ids: Vec<i64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let n = THREADS * PER_THREAD;
    all_ids.sort();
    all_ids.dedup();
    assert_eq!(all_ids.len(), n);
    assert_eq!(s.offline_count(o).unwrap(), n);
    let (ver, items) = s.roster(o).unwrap();
    assert_eq!(items.len(), n);
    assert_eq!(ver, n as u64);
    assert_eq!(s.list_accounts(None).unwrap().len(), n + 1);

    // Quota holds under concurrency: exactly `limit` pushes win.
    let q = "quota@x.example";
    s.create_account(q, &creds(1)).unwrap();
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                (0..10)
                    .filter(|_| s.offline_push(q, "<message/>", 0, 37).is_ok())
                    .count()
            })
        })
        .collect();
    let ok: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(ok, 37);
    assert_eq!(s.offline_count(q).unwrap(), 37);
}

fn pep_item(id: &str, stamp_ms: i64) -> PepItem {
    PepItem {
        id: id.to_owned(),
        payload: format!("<bundle xmlns='urn:xmpp:omemo:2'>{id}</bundle>"),
        stamp_ms,
    }
}

fn ids(v: &[PepItem]) -> Vec<&str> {
    v.iter().map(|i| i.id.as_str()).collect()
}

pub fn pep(s: &impl Store) {
    let a = "a@x.example";
    let open_max = PepNodeConfig {
        access_model: "open".into(),
        max_items: None,
        persist_items: true,
    };
    assert!(matches!(
        s.pep_configure(a, "n", &open_max, 10, 100),
        Err(StoreError::NotFound(_))
    ));
    s.create_account(a, &creds(1)).unwrap();
    assert_eq!(s.pep_node(a, "n").unwrap(), None);
    assert!(matches!(
        s.pep_publish(a, "n", &pep_item("1", 1), 5),
        Err(StoreError::NotFound(_))
    ));
    s.pep_configure(a, "n", &open_max, 10, 100).unwrap();
    assert_eq!(s.pep_node(a, "n").unwrap(), Some(open_max.clone()));
    for (i, id) in ["1", "2", "3"].iter().enumerate() {
        s.pep_publish(a, "n", &pep_item(id, i as i64), 100).unwrap();
    }
    // Republishing an id makes it the newest.
    s.pep_publish(a, "n", &pep_item("1", 9), 100).unwrap();
    let all = s.pep_items(a, "n", None, None).unwrap();
    assert_eq!(ids(&all), ["2", "3", "1"]);
    assert_eq!(all[2], pep_item("1", 9));
    assert_eq!(
        ids(&s.pep_items(a, "n", None, Some(2)).unwrap()),
        ["3", "1"]
    );
    let want = vec!["3".to_owned(), "nope".to_owned()];
    assert_eq!(ids(&s.pep_items(a, "n", Some(&want), None).unwrap()), ["3"]);
    // Publishing beyond the limit drops the oldest.
    s.pep_publish(a, "n", &pep_item("4", 10), 3).unwrap();
    assert_eq!(
        ids(&s.pep_items(a, "n", None, None).unwrap()),
        ["3", "1", "4"]
    );
    // Reconfiguring to fewer items prunes.
    let one = PepNodeConfig::default();
    s.pep_configure(a, "n", &one, 10, 100).unwrap();
    assert_eq!(s.pep_node(a, "n").unwrap(), Some(one));
    assert_eq!(ids(&s.pep_items(a, "n", None, None).unwrap()), ["4"]);
    assert!(s.pep_retract(a, "n", "4").unwrap());
    assert!(!s.pep_retract(a, "n", "4").unwrap());
    assert!(s.pep_items(a, "n", None, None).unwrap().is_empty());

    // Node quota.
    s.pep_configure(a, "m", &open_max, 2, 100).unwrap();
    assert!(matches!(
        s.pep_configure(a, "o", &open_max, 2, 100),
        Err(StoreError::QuotaExceeded { limit: 2, .. })
    ));
    // Reconfiguring an existing node is not a new node.
    s.pep_configure(a, "m", &open_max, 2, 100).unwrap();
    assert_eq!(s.pep_nodes(a).unwrap(), ["m", "n"]);
    s.pep_publish(a, "m", &pep_item("x", 1), 100).unwrap();
    assert!(s.pep_delete_node(a, "m").unwrap());
    assert!(!s.pep_delete_node(a, "m").unwrap());
    assert_eq!(s.pep_node(a, "m").unwrap(), None);
    // A re-created node starts empty.
    s.pep_configure(a, "m", &open_max, 2, 100).unwrap();
    assert!(s.pep_items(a, "m", None, None).unwrap().is_empty());
    assert!(s.pep_nodes("b@x.example").unwrap().is_empty());

    // vCards.
    assert_eq!(s.vcard(a).unwrap(), None);
    assert!(matches!(
        s.set_vcard("b@x.example", Some("<vCard/>")),
        Err(StoreError::NotFound(_))
    ));
    s.set_vcard(a, Some("<vCard xmlns='vcard-temp'><FN>A</FN></vCard>"))
        .unwrap();
    assert_eq!(
        s.vcard(a).unwrap().as_deref(),
        Some("<vCard xmlns='vcard-temp'><FN>A</FN></vCard>")
    );
    s.set_vcard(a, Some("<vCard xmlns='vcard-temp'/>")).unwrap();
    assert_eq!(
        s.vcard(a).unwrap().as_deref(),
        Some("<vCard xmlns='vcard-temp'/>")
    );
    s.set_vcard(a, None).unwrap();
    assert_eq!(s.vcard(a).unwrap(), None);

    // Account removal takes the nodes, items and vCard along.
    s.pep_publish(a, "m", &pep_item("y", 1), 100).unwrap();
    s.set_vcard(a, Some("<vCard xmlns='vcard-temp'/>")).unwrap();
    s.remove_account(a).unwrap();
    s.create_account(a, &creds(1)).unwrap();
    assert!(s.pep_nodes(a).unwrap().is_empty());
    assert!(s.pep_items(a, "m", None, None).unwrap().is_empty());
    assert_eq!(s.vcard(a).unwrap(), None);
}

fn pw(ns: &str, xml: Option<&str>) -> (String, Option<String>) {
    (ns.to_owned(), xml.map(str::to_owned))
}

pub fn private_xml(s: &impl Store) {
    let (a, b) = ("a@x.example", "b@x.example");
    let bm = "<storage xmlns='storage:bookmarks'><conference jid='r@muc.x.example'/></storage>";
    assert!(matches!(
        s.set_private_xml("nobody@x.example", &[pw("storage:bookmarks", Some(bm))], 4),
        Err(StoreError::NotFound(_))
    ));
    s.create_account(a, &creds(1)).unwrap();
    s.create_account(b, &creds(2)).unwrap();
    assert_eq!(s.private_xml(a, "storage:bookmarks").unwrap(), None);
    s.set_private_xml(a, &[pw("storage:bookmarks", Some(bm))], 2)
        .unwrap();
    assert_eq!(
        s.private_xml(a, "storage:bookmarks").unwrap().as_deref(),
        Some(bm)
    );
    // Per account and per namespace.
    assert_eq!(s.private_xml(b, "storage:bookmarks").unwrap(), None);
    assert_eq!(s.private_xml(a, "storage:rosternotes").unwrap(), None);
    // Replacing does not count against the limit.
    let empty = "<storage xmlns='storage:bookmarks'/>";
    s.set_private_xml(a, &[pw("storage:bookmarks", Some(empty))], 1)
        .unwrap();
    assert_eq!(
        s.private_xml(a, "storage:bookmarks").unwrap().as_deref(),
        Some(empty)
    );
    // Several namespaces at once, all or nothing: past the limit none of them is stored.
    assert!(matches!(
        s.set_private_xml(
            a,
            &[
                pw("storage:bookmarks", Some(bm)),
                pw("x:one", Some("<q xmlns='x:one'/>")),
                pw("x:two", Some("<q xmlns='x:two'/>")),
            ],
            2
        ),
        Err(StoreError::QuotaExceeded { limit: 2, .. })
    ));
    assert_eq!(s.private_xml(a, "x:one").unwrap(), None);
    assert_eq!(
        s.private_xml(a, "storage:bookmarks").unwrap().as_deref(),
        Some(empty)
    );
    // Clearing one in the same write makes room for another.
    s.set_private_xml(
        a,
        &[
            pw("storage:bookmarks", None),
            pw("x:one", Some("<q xmlns='x:one'/>")),
            pw("x:two", Some("<q xmlns='x:two'/>")),
        ],
        2,
    )
    .unwrap();
    assert_eq!(s.private_xml(a, "storage:bookmarks").unwrap(), None);
    assert_eq!(
        s.private_xml(a, "x:two").unwrap().as_deref(),
        Some("<q xmlns='x:two'/>")
    );
    // Another account has its own allowance; clearing what is not there is no error.
    s.set_private_xml(b, &[pw("x:two", Some("<q xmlns='x:two'/>"))], 1)
        .unwrap();
    s.set_private_xml(b, &[pw("x:none", None)], 1).unwrap();
    // Account removal takes it along, and only that account's.
    s.remove_account(a).unwrap();
    s.create_account(a, &creds(1)).unwrap();
    assert_eq!(s.private_xml(a, "x:one").unwrap(), None);
    assert_eq!(s.private_xml(a, "x:two").unwrap(), None);
    assert_eq!(
        s.private_xml(b, "x:two").unwrap().as_deref(),
        Some("<q xmlns='x:two'/>")
    );
}

fn reg(jid: &str, node: &str, options: Option<&str>) -> crate::PushRegistration {
    crate::PushRegistration {
        jid: jid.to_owned(),
        node: node.to_owned(),
        options: options.map(str::to_owned),
    }
}

pub fn push(s: &impl Store) {
    let (a, b) = ("a@x.example", "b@x.example");
    assert!(matches!(
        s.push_enable(a, &reg("push.x.example", "n1", None), 4),
        Err(StoreError::NotFound(_))
    ));
    s.create_account(a, &creds(1)).unwrap();
    s.create_account(b, &creds(2)).unwrap();
    assert!(s.push_registrations(a).unwrap().is_empty());
    s.push_enable(
        a,
        &reg(
            "push.x.example",
            "phone",
            Some("<x xmlns='jabber:x:data'/>"),
        ),
        2,
    )
    .unwrap();
    s.push_enable(a, &reg("push.x.example", "tablet", None), 2)
        .unwrap();
    // Same service and node: replaced, not added (no room needed).
    s.push_enable(a, &reg("push.x.example", "phone", None), 2)
        .unwrap();
    assert_eq!(
        s.push_registrations(a).unwrap(),
        vec![
            reg("push.x.example", "phone", None),
            reg("push.x.example", "tablet", None)
        ]
    );
    assert!(matches!(
        s.push_enable(a, &reg("other.x.example", "laptop", None), 2),
        Err(StoreError::QuotaExceeded { limit: 2, .. })
    ));
    s.push_enable(b, &reg("push.x.example", "phone", None), 2)
        .unwrap();
    // Disabling one node, then the whole service.
    assert_eq!(
        s.push_disable(a, "push.x.example", Some("tablet")).unwrap(),
        1
    );
    assert_eq!(
        s.push_disable(a, "push.x.example", Some("tablet")).unwrap(),
        0
    );
    s.push_enable(a, &reg("other.x.example", "laptop", None), 2)
        .unwrap();
    assert_eq!(s.push_disable(a, "push.x.example", None).unwrap(), 1);
    assert_eq!(
        s.push_registrations(a).unwrap(),
        vec![reg("other.x.example", "laptop", None)]
    );
    // Account removal takes them along, and only that account's.
    s.remove_account(a).unwrap();
    s.create_account(a, &creds(1)).unwrap();
    assert!(s.push_registrations(a).unwrap().is_empty());
    assert_eq!(s.push_registrations(b).unwrap().len(), 1);
}

fn archived(id: &str, with: &str, stamp_ms: i64) -> crate::ArchivedMessage {
    crate::ArchivedMessage {
        id: id.to_owned(),
        with_bare: with.split('/').next().unwrap().to_owned(),
        with_full: with.to_owned(),
        stanza: format!("<message id='{id}'><body>{id}</body></message>"),
        stamp_ms,
    }
}

/// Retention: the oldest copies go first, `max` at a time, across owners; counts (whole
/// archive and per partner) and pages follow, and copies of one message that two owners
/// share go independently.
pub fn archive_expire(s: &impl Store) {
    use crate::{ArchiveQuery, WriteOp};
    let (a, b) = ("a@x.example", "b@x.example");
    s.create_account(a, &creds(1)).unwrap();
    s.create_account(b, &creds(2)).unwrap();
    // One message a→b archived for both (a shared stanza in SQLite), then more for a.
    let out = batch(
        s,
        vec![
            WriteOp::Archive {
                owner: a.into(),
                msg: archived("x1", "b@x.example", 1_000),
            },
            WriteOp::Archive {
                owner: b.into(),
                msg: archived("x1", "a@x.example", 1_000),
            },
        ],
    );
    assert!(out.iter().all(|o| o.is_ok()), "{out:?}");
    s.archive_append(a, &archived("m2", "b@x.example", 2_000))
        .unwrap();
    s.archive_append(a, &archived("m3", "c@x.example", 3_000))
        .unwrap();
    s.archive_append(b, &archived("n4", "c@x.example", 4_000))
        .unwrap();
    assert_eq!(s.archive_expire(500, 10).unwrap(), 0);
    // Both copies of x1 are the oldest; one round of one takes one of them.
    assert_eq!(s.archive_expire(2_500, 1).unwrap(), 1);
    assert_eq!(s.archive_count(a).unwrap() + s.archive_count(b).unwrap(), 4);
    assert_eq!(s.archive_expire(2_500, 10).unwrap(), 2);
    assert_eq!(s.archive_expire(2_500, 10).unwrap(), 0);
    assert_eq!(s.archive_count(a).unwrap(), 1);
    assert_eq!(s.archive_count(b).unwrap(), 1);
    let all = |_owner: &str, with: Option<&str>| ArchiveQuery {
        with: with.map(str::to_owned),
        max: 50,
        ..ArchiveQuery::default()
    };
    let p = s.archive_query(a, &all(a, None)).unwrap().unwrap();
    assert_eq!((page_ids(&p), p.count), (vec!["m3"], 1));
    let p = s
        .archive_query(a, &all(a, Some("b@x.example")))
        .unwrap()
        .unwrap();
    assert_eq!((page_ids(&p), p.count), (vec![], 0));
    let p = s.archive_query(b, &all(b, None)).unwrap().unwrap();
    assert_eq!((page_ids(&p), p.count), (vec!["n4"], 1));
    // Archiving goes on as before, also with the partner whose count reached zero.
    s.archive_append(a, &archived("m5", "b@x.example", 5_000))
        .unwrap();
    let p = s
        .archive_query(a, &all(a, Some("b@x.example")))
        .unwrap()
        .unwrap();
    assert_eq!((page_ids(&p), p.count), (vec!["m5"], 1));
    assert_eq!(s.archive_expire(i64::MAX, 100).unwrap(), 3);
    assert_eq!(s.archive_count(a).unwrap(), 0);
}

/// Messages by id, in archive order, whether merged or still in the log; an unknown id fails
/// the whole lookup.
pub fn archive_get(s: &impl Store) {
    let a = "a@x.example";
    s.create_account(a, &creds(1)).unwrap();
    for (i, id) in ["g1", "g2", "g3", "g4"].iter().enumerate() {
        s.archive_append(a, &archived(id, "b@x.example", 100 + i as i64))
            .unwrap();
    }
    let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let got = s
        .archive_get(a, &ids(&["g3", "g1", "g3"]))
        .unwrap()
        .unwrap();
    let got: Vec<&str> = got.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(got, ["g1", "g3"]);
    assert_eq!(s.archive_get(a, &ids(&["g1", "nope"])).unwrap(), None);
    assert_eq!(s.archive_get(a, &[]).unwrap(), Some(vec![]));
    assert_eq!(s.archive_get("b@x.example", &ids(&["g1"])).unwrap(), None);
    let m = s.archive_get(a, &ids(&["g4"])).unwrap().unwrap();
    assert_eq!(
        (m[0].stamp_ms, m[0].with_bare.as_str()),
        (103, "b@x.example")
    );
    assert!(m[0].stanza.contains("<body>g4</body>"));
}

fn page_ids(p: &crate::ArchivePage) -> Vec<&str> {
    p.messages.iter().map(|m| m.id.as_str()).collect()
}

pub fn archive(s: &impl Store) {
    use crate::{ArchivePrefs, ArchiveQuery};
    assert!(matches!(
        s.archive_append("a@x.example", &archived("m0", "b@x.example", 0)),
        Err(StoreError::NotFound(_))
    ));
    s.create_account("a@x.example", &creds(1)).unwrap();
    s.create_account("c@x.example", &creds(2)).unwrap();
    // m0..m9, alternating partners, stamps 100, 200, …
    for i in 0..10 {
        let with = if i % 2 == 0 {
            "b@x.example/phone"
        } else {
            "d@y.example/pc"
        };
        s.archive_append(
            "a@x.example",
            &archived(&format!("m{i}"), with, 100 * (i + 1)),
        )
        .unwrap();
    }
    s.archive_append("c@x.example", &archived("c0", "a@x.example", 50))
        .unwrap();
    assert!(matches!(
        s.archive_append("a@x.example", &archived("m3", "b@x.example", 0)),
        Err(StoreError::AlreadyExists(_))
    ));
    assert_eq!(s.archive_count("a@x.example").unwrap(), 10);
    let q = |f: &dyn Fn(&mut ArchiveQuery)| {
        let mut q = ArchiveQuery {
            max: 100,
            ..Default::default()
        };
        f(&mut q);
        s.archive_query("a@x.example", &q).unwrap()
    };
    let all = q(&|_| {}).unwrap();
    assert_eq!(all.count, 10);
    assert!(all.complete);
    assert_eq!(all.messages[3], archived("m3", "d@y.example/pc", 400));
    // Filters.
    let b = q(&|q| q.with = Some("b@x.example".into())).unwrap();
    assert_eq!(page_ids(&b), ["m0", "m2", "m4", "m6", "m8"]);
    let full = q(&|q| q.with = Some("d@y.example/pc".into())).unwrap();
    assert_eq!(page_ids(&full), ["m1", "m3", "m5", "m7", "m9"]);
    assert!(
        q(&|q| q.with = Some("d@y.example/other".into()))
            .unwrap()
            .messages
            .is_empty()
    );
    let range = q(&|q| {
        q.start = Some(300);
        q.end = Some(500);
    })
    .unwrap();
    assert_eq!(page_ids(&range), ["m2", "m3", "m4"]);
    assert_eq!(range.count, 3);
    // Forward paging: no gaps, no duplicates.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let p = q(&|q| {
            q.max = 3;
            q.after_id = after.clone();
        })
        .unwrap();
        assert_eq!(p.count, 10);
        // The index is given where it needs no counting: on the first page only.
        assert_eq!(p.first_index, after.is_none().then_some(0));
        seen.extend(p.messages.iter().map(|m| m.id.clone()));
        after = p.messages.last().map(|m| m.id.clone());
        if p.complete {
            break;
        }
    }
    assert_eq!(seen, (0..10).map(|i| format!("m{i}")).collect::<Vec<_>>());
    // Backward paging from the end, with a filter.
    let last = q(&|q| {
        q.max = 2;
        q.from_end = true;
        q.with = Some("b@x.example".into());
    })
    .unwrap();
    assert_eq!(page_ids(&last), ["m6", "m8"]);
    assert!(!last.complete);
    // (The last page's index, count - len, is not sent: see `first_index_known`.)
    assert_eq!(last.first_index, None);
    let before = q(&|q| {
        q.max = 2;
        q.before_id = Some("m6".into());
        q.with = Some("b@x.example".into());
    })
    .unwrap();
    assert_eq!(page_ids(&before), ["m2", "m4"]);
    let first = q(&|q| {
        q.max = 2;
        q.before_id = Some("m2".into());
        q.with = Some("b@x.example".into());
    })
    .unwrap();
    assert_eq!(page_ids(&first), ["m0"]);
    assert!(first.complete);
    // Both bounds; an unknown id.
    let between = q(&|q| {
        q.after_id = Some("m2".into());
        q.before_id = Some("m5".into());
    })
    .unwrap();
    assert_eq!(page_ids(&between), ["m3", "m4"]);
    assert!(q(&|q| q.after_id = Some("nope".into())).is_none());
    assert!(q(&|q| q.max = 0).unwrap().messages.is_empty());
    // Other owners are separate.
    assert!(
        s.archive_query(
            "c@x.example",
            &ArchiveQuery {
                max: 10,
                after_id: Some("m1".into()),
                ..Default::default()
            }
        )
        .unwrap()
        .is_none()
    );
    // Preferences.
    assert_eq!(
        s.archive_prefs("a@x.example").unwrap(),
        ArchivePrefs::default()
    );
    let prefs = ArchivePrefs {
        default: "roster".into(),
        always: vec!["b@x.example".into(), "e@x.example".into()],
        never: vec!["d@y.example".into()],
    };
    s.set_archive_prefs("a@x.example", &prefs).unwrap();
    assert_eq!(s.archive_prefs("a@x.example").unwrap(), prefs);
    assert!(s.set_archive_prefs("zz@x.example", &prefs).is_err());
    // Clearing, and removal with the account.
    s.archive_clear("c@x.example").unwrap();
    assert_eq!(s.archive_count("c@x.example").unwrap(), 0);
    s.remove_account("a@x.example").unwrap();
    assert_eq!(s.archive_count("a@x.example").unwrap(), 0);
    assert_eq!(
        s.archive_prefs("a@x.example").unwrap(),
        ArchivePrefs::default()
    );
    s.create_account("a@x.example", &creds(1)).unwrap();
    // The old ids are gone: appending one again works.
    s.archive_append("a@x.example", &archived("m3", "b@x.example", 0))
        .unwrap();
}

fn batch(s: &impl Store, ops: Vec<crate::WriteOp>) -> Vec<crate::WriteOutcome> {
    let (tx, rx) = std::sync::mpsc::channel();
    s.write_batch(
        ops,
        Box::new(move |o| {
            tx.send(o).unwrap();
        }),
    );
    rx.recv().expect("write_batch calls back")
}

/// A batch runs every op, each on its own: one failing (unknown account, quota, duplicate
/// archive id) leaves the others written; outcomes come back in order, with push row ids.
pub fn batch_writes(s: &impl Store) {
    use crate::{ArchiveQuery, WriteOp};
    s.create_account("a@x.example", &creds(1)).unwrap();
    s.create_account("b@x.example", &creds(2)).unwrap();
    s.offline_push("b@x.example", "<message id='full'/>", 1, 10)
        .unwrap();
    let push = |owner: &str, id: &str, limit| WriteOp::OfflinePush {
        owner: owner.into(),
        stanza: format!("<message id='{id}'/>"),
        stamp_ms: 5,
        limit,
        id: None,
    };
    let out = batch(
        s,
        vec![
            WriteOp::Archive {
                owner: "a@x.example".into(),
                msg: archived("s1", "b@x.example", 10),
            },
            WriteOp::Archive {
                owner: "b@x.example".into(),
                msg: archived("r1", "a@x.example", 10),
            },
            WriteOp::Archive {
                owner: "nobody@x.example".into(),
                msg: archived("r2", "a@x.example", 10),
            },
            push("b@x.example", "m1", usize::MAX),
            push("b@x.example", "over", 1),
            WriteOp::Archive {
                owner: "a@x.example".into(),
                msg: archived("s1", "b@x.example", 11),
            },
            push("nobody@x.example", "m2", 10),
        ],
    );
    assert_eq!(out.len(), 7);
    assert!(matches!(out[0], Ok(None)));
    assert!(matches!(out[1], Ok(None)));
    assert!(matches!(&out[2], Err(StoreError::NotFound(j)) if j == "nobody@x.example"));
    let pushed = match out[3] {
        Ok(Some(id)) => id,
        ref other => panic!("push outcome {other:?}"),
    };
    assert!(matches!(
        out[4],
        Err(StoreError::QuotaExceeded { limit: 1, .. })
    ));
    assert!(matches!(&out[5], Err(StoreError::AlreadyExists(id)) if id == "s1"));
    assert!(matches!(out[6], Err(StoreError::NotFound(_))));
    // What succeeded is there, once; what failed left nothing behind.
    let q = ArchiveQuery {
        max: 10,
        ..Default::default()
    };
    let a = s.archive_query("a@x.example", &q).unwrap().unwrap();
    assert_eq!(page_ids(&a), ["s1"]);
    assert_eq!(a.messages[0].stamp_ms, 10);
    let b = s.archive_query("b@x.example", &q).unwrap().unwrap();
    assert_eq!(page_ids(&b), ["r1"]);
    let queued: Vec<String> = s
        .offline_fetch("b@x.example", 10)
        .unwrap()
        .into_iter()
        .map(|m| m.stanza)
        .collect();
    assert_eq!(queued, ["<message id='full'/>", "<message id='m1'/>"]);
    // Deletes travel in batches too.
    let out = batch(
        s,
        vec![WriteOp::OfflineDelete {
            owner: "b@x.example".into(),
            ids: vec![pushed],
        }],
    );
    assert!(matches!(out[..], [Ok(None)]));
    assert_eq!(s.offline_count("b@x.example").unwrap(), 1);
    // An empty batch is answered too.
    assert!(batch(s, Vec::new()).is_empty());
}

/// Deleting the newest rows of the whole archive (another owner's clear or removal) does not
/// disturb anyone's order: later messages still page after earlier ones, and a deleted id
/// resolves to nothing, not to a later message.
pub fn archive_order_after_newest_deleted(s: &impl Store) {
    use crate::ArchiveQuery;
    s.create_account("a@x.example", &creds(1)).unwrap();
    s.create_account("b@x.example", &creds(2)).unwrap();
    s.archive_append("a@x.example", &archived("a1", "b@x.example", 1))
        .unwrap();
    s.archive_append("a@x.example", &archived("a2", "b@x.example", 2))
        .unwrap();
    s.archive_append("b@x.example", &archived("b1", "a@x.example", 3))
        .unwrap();
    s.archive_append("b@x.example", &archived("b2", "a@x.example", 4))
        .unwrap();
    s.archive_clear("b@x.example").unwrap();
    s.archive_append("a@x.example", &archived("a3", "b@x.example", 5))
        .unwrap();
    s.archive_append("b@x.example", &archived("b3", "a@x.example", 6))
        .unwrap();
    let page = |owner: &str, q: ArchiveQuery| s.archive_query(owner, &q).unwrap();
    let all = page(
        "a@x.example",
        ArchiveQuery {
            max: 10,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(page_ids(&all), ["a1", "a2", "a3"]);
    let after = page(
        "a@x.example",
        ArchiveQuery {
            after_id: Some("a2".into()),
            max: 10,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(page_ids(&after), ["a3"]);
    assert_eq!(after.first_index, None);
    let last = page(
        "a@x.example",
        ArchiveQuery {
            from_end: true,
            max: 1,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(page_ids(&last), ["a3"]);
    for gone in ["b1", "b2"] {
        let q = ArchiveQuery {
            after_id: Some(gone.into()),
            max: 10,
            ..Default::default()
        };
        assert_eq!(page("b@x.example", q), None, "{gone}");
    }
    // The same after removing the account that holds the newest row.
    s.remove_account("b@x.example").unwrap();
    s.create_account("b@x.example", &creds(2)).unwrap();
    s.archive_append("a@x.example", &archived("a4", "b@x.example", 7))
        .unwrap();
    s.archive_append("b@x.example", &archived("b4", "a@x.example", 8))
        .unwrap();
    let after = page(
        "a@x.example",
        ArchiveQuery {
            after_id: Some("a3".into()),
            max: 10,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(page_ids(&after), ["a4"]);
    let b = page(
        "b@x.example",
        ArchiveQuery {
            max: 10,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(page_ids(&b), ["b4"]);
}

/// Each owner's archive is in time order: a copy stamped before the owner's newest is stored
/// with the newest's stamp, after everything already there, and time filters select by the
/// stored stamps. Another owner's archive is not affected.
pub fn archive_time_order(s: &impl Store) {
    use crate::ArchiveQuery;
    s.create_account("a@x.example", &creds(1)).unwrap();
    s.create_account("b@x.example", &creds(2)).unwrap();
    let append = |owner: &str, id: &str, stamp: i64| {
        s.archive_append(owner, &archived(id, "c@x.example", stamp))
            .unwrap()
    };
    append("a@x.example", "a1", 1_000);
    append("a@x.example", "a2", 2_000);
    append("b@x.example", "b1", 500);
    // The clock went back (or two copies raced): stored at 2,000, after a2.
    append("a@x.example", "a3", 1_500);
    append("a@x.example", "a4", 2_500);
    append("b@x.example", "b2", 700);
    let page = |owner: &str, q: ArchiveQuery| s.archive_query(owner, &q).unwrap().unwrap();
    let all = page(
        "a@x.example",
        ArchiveQuery {
            max: 10,
            ..Default::default()
        },
    );
    assert_eq!(page_ids(&all), ["a1", "a2", "a3", "a4"]);
    let stamps: Vec<i64> = all.messages.iter().map(|m| m.stamp_ms).collect();
    assert_eq!(stamps, [1_000, 2_000, 2_000, 2_500]);
    // A client that saw a2 as the newest finds a3 after it.
    let after = page(
        "a@x.example",
        ArchiveQuery {
            after_id: Some("a2".into()),
            max: 10,
            ..Default::default()
        },
    );
    assert_eq!(page_ids(&after), ["a3", "a4"]);
    // Time filters select by the stored stamp (both ends included).
    let window = page(
        "a@x.example",
        ArchiveQuery {
            start: Some(1_500),
            end: Some(2_000),
            max: 10,
            ..Default::default()
        },
    );
    assert_eq!(page_ids(&window), ["a2", "a3"]);
    assert_eq!(window.count, 2);
    let before = page(
        "a@x.example",
        ArchiveQuery {
            before_id: Some("a3".into()),
            start: Some(2_000),
            max: 10,
            ..Default::default()
        },
    );
    assert_eq!(page_ids(&before), ["a2"]);
    assert_eq!(before.count, 3);
    // b's stamps are b's own.
    let b = page(
        "b@x.example",
        ArchiveQuery {
            max: 10,
            ..Default::default()
        },
    );
    let stamps: Vec<i64> = b.messages.iter().map(|m| m.stamp_ms).collect();
    assert_eq!(stamps, [500, 700]);
    // After the archive is cleared, an older stamp is kept as it is.
    s.archive_clear("a@x.example").unwrap();
    append("a@x.example", "a5", 100);
    let again = page(
        "a@x.example",
        ArchiveQuery {
            max: 10,
            ..Default::default()
        },
    );
    assert_eq!(again.messages[0].stamp_ms, 100);
}

fn note<'a>(at_ms: i64, action: &'a str, detail: &'a str) -> crate::AuditNote<'a> {
    crate::AuditNote {
        at_ms,
        actor: "op",
        action,
        detail,
    }
}

pub fn providers(s: &impl Store) {
    use crate::{Provider, ProviderStatus, Scope, StoreError, TermsAcceptance};
    assert_eq!(s.registry_version().unwrap(), 0);
    assert!(s.providers().unwrap().is_empty());
    let mut acme = Provider::new(
        "acme",
        "Acme Chat",
        vec!["acme.example".into(), "a.example".into()],
    );
    s.provider_add(&acme, &note(10, "add", "")).unwrap();
    let v1 = s.registry_version().unwrap();
    assert!(v1 > 0);
    assert_eq!(s.provider("acme").unwrap().as_ref(), Some(&acme));
    assert_eq!(s.provider("nope").unwrap(), None);

    // Ids and domains are unique; a refused write changes nothing, not even the audit log.
    match s.provider_add(&acme, &note(11, "add", "")) {
        Err(StoreError::Conflict(m)) => assert!(m.contains("acme"), "{m}"),
        other => panic!("{other:?}"),
    }
    let beta = Provider::new("beta", "Beta", vec!["b.example".into(), "a.example".into()]);
    match s.provider_add(&beta, &note(12, "add", "")) {
        Err(StoreError::Conflict(m)) => {
            assert!(m.contains("a.example") && m.contains("acme"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.provider("beta").unwrap(), None);
    assert_eq!(s.registry_version().unwrap(), v1);
    let beta = Provider::new("beta", "Beta", vec!["b.example".into()]);
    s.provider_add(&beta, &note(13, "add", "")).unwrap();

    // Every field survives a round trip, and domains keep their order.
    acme.status = ProviderStatus::Active;
    acme.terms = Some(TermsAcceptance {
        version: "2024-03".into(),
        accepted_ms: 1_700_000_000_000,
        accepted_by: "Jo Signer".into(),
    });
    acme.issuer = Some("https://acme.example".into());
    acme.jwks = Some(r#"{"keys":[]}"#.into());
    acme.cert_pins = vec!["ab".repeat(32), "cd".repeat(32)];
    acme.scopes = vec![Scope::Text, Scope::Media, Scope::Files];
    acme.rate_per_sec = Some(500);
    acme.user_rate_per_sec = Some(5);
    acme.link = Some("xmpp.acme.example:5270".into());
    acme.domains = vec!["z.example".into(), "acme.example".into()];
    s.provider_update(&acme, &note(20, "activate", "signed"))
        .unwrap();
    assert_eq!(s.provider("acme").unwrap().as_ref(), Some(&acme));
    // a.example is free again.
    let gamma = Provider::new("gamma", "Gamma", vec!["a.example".into()]);
    s.provider_add(&gamma, &note(21, "add", "")).unwrap();
    let mut taken = beta.clone();
    taken.domains.push("z.example".into());
    assert!(matches!(
        s.provider_update(&taken, &note(22, "update", "")),
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.provider("beta").unwrap().as_ref(), Some(&beta));
    assert!(matches!(
        s.provider_update(&Provider::new("nope", "N", vec![]), &note(23, "update", "")),
        Err(StoreError::NotFound(_))
    ));
    let ids: Vec<String> = s.providers().unwrap().into_iter().map(|p| p.id).collect();
    assert_eq!(ids, ["acme", "beta", "gamma"]);

    // The audit log: one entry per change, oldest first, per provider or all.
    let all = s.provider_audit(None, 100).unwrap();
    let actions: Vec<(&str, &str, i64)> = all
        .iter()
        .map(|e| (e.provider.as_str(), e.action.as_str(), e.at_ms))
        .collect();
    assert_eq!(
        actions,
        [
            ("acme", "add", 10),
            ("beta", "add", 13),
            ("acme", "activate", 20),
            ("gamma", "add", 21)
        ]
    );
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(s.registry_version().unwrap(), all[3].seq);
    let acme_log = s.provider_audit(Some("acme"), 100).unwrap();
    assert_eq!(acme_log.len(), 2);
    assert_eq!(
        (acme_log[1].actor.as_str(), acme_log[1].detail.as_str()),
        ("op", "signed")
    );
    let last = s.provider_audit(None, 1).unwrap();
    assert_eq!(last[0].provider, "gamma");
}

pub fn consent(s: &impl Store) {
    use crate::{Consent, InboxMode, StoreError};
    let o = "a@x.example";
    s.create_account(o, &creds(1)).unwrap();
    assert_eq!(s.consent(o).unwrap(), Consent::default());
    assert!(!s.consent(o).unwrap().allows("acme"));
    let c = Consent {
        enabled: true,
        inbox: InboxMode::Combined,
        providers: vec!["zeta".into(), "acme".into(), "acme".into()],
        updated_ms: 42,
    };
    let v0 = s.consent_version().unwrap();
    s.set_consent(o, &c).unwrap();
    let v1 = s.consent_version().unwrap();
    assert_ne!(v0, v1, "a consent change changes the version");
    let got = s.consent(o).unwrap();
    assert_eq!(got.providers, ["acme", "zeta"]);
    assert_eq!(
        (got.enabled, got.inbox, got.updated_ms),
        (true, InboxMode::Combined, 42)
    );
    assert!(got.allows("acme") && !got.allows("beta"));
    assert!(matches!(
        s.set_consent("nobody@x.example", &c),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        s.consent_version().unwrap(),
        v1,
        "a failed change is no change"
    );
    // Removing the account forgets its consent; a new account of the same name starts off.
    s.remove_account(o).unwrap();
    assert_ne!(
        s.consent_version().unwrap(),
        v1,
        "removing a consent changes the version"
    );
    s.create_account(o, &creds(1)).unwrap();
    assert_eq!(s.consent(o).unwrap(), Consent::default());
}

pub fn reports(s: &impl Store) {
    use crate::{
        AbuseReport, Evidence, EvidenceMessage, ReportClosure, ReportFilter, ReportReason,
    };
    let (a, b) = ("a@x.example", "b@x.example");
    s.create_account(a, &creds(1)).unwrap();
    s.create_account(b, &creds(2)).unwrap();
    let report = |reporter: &str, reported: &str, at_ms: i64, text: &str| AbuseReport {
        id: 0,
        at_ms,
        reporter: reporter.into(),
        reported: reported.into(),
        provider: reported
            .ends_with("acme.example")
            .then(|| "acme".to_string()),
        reason: ReportReason::Spam,
        text: text.into(),
        evidence: vec![
            Evidence {
                stanza_id: "s1".into(),
                found: Some(EvidenceMessage {
                    at_ms: at_ms - 5,
                    from: format!("{reported}/phone"),
                    from_reported: true,
                    origin: Some("acme".into()),
                    encrypted: true,
                    bytes: 1800,
                }),
            },
            Evidence {
                stanza_id: "gone".into(),
                found: None,
            },
        ],
        closed: None,
    };
    let first = s
        .report_add(&report(a, "eve@acme.example", 100, "buy now"))
        .unwrap();
    let got = s.report(first).unwrap().unwrap();
    assert_eq!(got.id, first);
    assert_eq!(got.text, "buy now");
    assert_eq!(got.provider.as_deref(), Some("acme"));
    assert_eq!(
        got.evidence,
        report(a, "eve@acme.example", 100, "").evidence
    );
    // A second open report by the same reporter on the same JID replaces the first.
    let second = s
        .report_add(&report(a, "eve@acme.example", 200, "again"))
        .unwrap();
    assert!(second > first);
    assert!(s.report(first).unwrap().is_none());
    s.report_add(&report(b, "eve@acme.example", 300, ""))
        .unwrap();
    s.report_add(&report(b, "mallory@x.example", 400, ""))
        .unwrap();
    let all = s.reports(&ReportFilter::default()).unwrap();
    assert_eq!(
        all.iter().map(|r| r.at_ms).collect::<Vec<_>>(),
        [200, 300, 400]
    );
    let acme = ReportFilter {
        provider: Some("acme".into()),
        ..Default::default()
    };
    assert_eq!(s.reports(&acme).unwrap().len(), 2);
    let newest = ReportFilter {
        limit: 1,
        ..Default::default()
    };
    assert_eq!(s.reports(&newest).unwrap()[0].at_ms, 400);
    let since = ReportFilter {
        since_ms: Some(300),
        ..Default::default()
    };
    assert_eq!(s.reports(&since).unwrap().len(), 2);
    assert_eq!(s.reports_by_since(a, 0).unwrap(), 1);
    assert_eq!(s.reports_by_since(b, 350).unwrap(), 1);
    let counts = s.report_counts("acme", 250).unwrap();
    assert_eq!(
        (counts.open, counts.open_reported, counts.recent),
        (2, 1, 1)
    );
    // Closing: once; a closed report stays, and a new one on the same pair opens beside it.
    let closure = ReportClosure {
        at_ms: 500,
        by: "cli:root".into(),
        note: "warned the provider".into(),
    };
    s.report_close(second, &closure).unwrap();
    assert!(matches!(
        s.report_close(second, &closure),
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.report_close(9999, &closure),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.report(second).unwrap().unwrap().closed, Some(closure));
    let open = ReportFilter {
        open_only: true,
        ..Default::default()
    };
    assert_eq!(s.reports(&open).unwrap().len(), 2);
    s.report_add(&report(a, "eve@acme.example", 600, "third"))
        .unwrap();
    assert_eq!(s.reports(&acme).unwrap().len(), 3);
    assert_eq!(s.report_counts("acme", 0).unwrap().open, 2);
    assert!(matches!(
        s.report_add(&report("nobody@x.example", "eve@acme.example", 1, "")),
        Err(StoreError::NotFound(_))
    ));
    // Removing the reporter's account removes its reports.
    s.remove_account(a).unwrap();
    assert!(
        s.reports(&ReportFilter::default())
            .unwrap()
            .iter()
            .all(|r| r.reporter == b)
    );
}

macro_rules! suite {
    ($modname:ident, $make:expr) => {
        mod $modname {
            use super::*;

            #[test]
            fn accounts() {
                let (s, _guard) = $make;
                super::accounts(&s);
            }
            #[test]
            fn roster() {
                let (s, _guard) = $make;
                super::roster(&s);
            }
            #[test]
            fn offline() {
                let (s, _guard) = $make;
                super::offline(&s);
            }
            #[test]
            fn quota() {
                let (s, _guard) = $make;
                super::quota(&s);
            }
            #[test]
            fn removal_cascades() {
                let (s, _guard) = $make;
                super::removal_cascades(&s);
            }
            #[test]
            fn pep() {
                let (s, _guard) = $make;
                super::pep(&s);
            }
            #[test]
            fn archive_get() {
                let (s, _guard) = $make;
                super::archive_get(&s);
            }
            #[test]
            fn archive_expire() {
                let (s, _guard) = $make;
                super::archive_expire(&s);
            }
            #[test]
            fn push() {
                let (s, _guard) = $make;
                super::push(&s);
            }
            #[test]
            fn providers() {
                let (s, _guard) = $make;
                super::providers(&s);
            }
            #[test]
            fn reports() {
                let (s, _guard) = $make;
                super::reports(&s);
            }
            #[test]
            fn consent() {
                let (s, _guard) = $make;
                super::consent(&s);
            }
            #[test]
            fn private_xml() {
                let (s, _guard) = $make;
                super::private_xml(&s);
            }
            #[test]
            fn concurrent_writers() {
                let (s, _guard) = $make;
                super::concurrent_writers(Arc::new(s));
            }
            #[test]
            fn blocking() {
                let (s, _guard) = $make;
                super::blocking(&s);
            }
            #[test]
            fn archive() {
                let (s, _guard) = $make;
                super::archive(&s);
            }
            #[test]
            fn archive_order_after_newest_deleted() {
                let (s, _guard) = $make;
                super::archive_order_after_newest_deleted(&s);
            }
            #[test]
            fn archive_time_order() {
                let (s, _guard) = $make;
                super::archive_time_order(&s);
            }
            #[test]
            fn batch_writes() {
                let (s, _guard) = $make;
                super::batch_writes(&s);
            }
            #[test]
            fn offline_reserved_ids() {
                let (s, _guard) = $make;
                super::offline_reserved_ids(&s);
            }
        }
    };
}

suite!(memory, (MemoryStore::new(), ()));
suite!(sqlite_mem, (SqliteStore::open_in_memory().unwrap(), ()));
suite!(sqlite_file, temp_sqlite());

/// After retention rounds the archive's bookkeeping still adds up: every stanza is referred
/// to exactly `refs` times, no stanza is left that nothing refers to, and the per-partner
/// counts sum to the archive's rows.
#[test]
fn sqlite_archive_expiry_keeps_stanzas_and_counts_consistent() {
    use crate::{ArchiveStore, WriteOp};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strait.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        let owners: Vec<String> = (0..4).map(|i| format!("u{i}@x.example")).collect();
        for (i, o) in owners.iter().enumerate() {
            s.create_account(o, &creds(i as u8)).unwrap();
        }
        // 200 messages, each archived for its sender and its recipient (one shared stanza).
        for i in 0..200usize {
            let (from, to) = (&owners[i % 4], &owners[(i + 1) % 4]);
            let id = format!("m{i}");
            let out = batch(
                &s,
                vec![
                    WriteOp::Archive {
                        owner: from.clone(),
                        msg: archived(&id, to, i as i64 * 10),
                    },
                    WriteOp::Archive {
                        owner: to.clone(),
                        msg: archived(&id, from, i as i64 * 10),
                    },
                ],
            );
            assert!(out.iter().all(|o| o.is_ok()));
        }
        // Rounds of 7 up to a cutoff in the middle (an odd size splits shared pairs).
        let mut gone = 0;
        loop {
            let n = s.archive_expire(1_005, 7).unwrap();
            gone += n;
            if n < 7 {
                break;
            }
        }
        assert_eq!(gone, 2 * 101);
        let left: usize = owners.iter().map(|o| s.archive_count(o).unwrap()).sum();
        assert_eq!(left, 2 * 99);
        s.close().unwrap();
    }
    let c = rusqlite::Connection::open(&path).unwrap();
    let q = |sql: &str| -> i64 { c.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(q("SELECT COUNT(*) FROM archive_log"), 0);
    assert_eq!(q("SELECT COUNT(*) FROM archive"), 198);
    assert_eq!(
        q("SELECT COALESCE(SUM(n), 0) FROM archive_with_counts"),
        198
    );
    assert_eq!(
        q("SELECT COUNT(*) FROM archive_with_counts WHERE n <= 0"),
        0
    );
    assert_eq!(
        q("SELECT COUNT(*) FROM archive_content c
           WHERE c.refs != (SELECT COUNT(*) FROM archive a WHERE a.content = c.cid)"),
        0
    );
    assert_eq!(q("SELECT COUNT(*) FROM archive_content"), 99);
}

/// `archive_get` finds merged copies (through the index) and logged ones alike, in order.
#[test]
fn sqlite_archive_get_spans_the_archive_and_the_log() {
    use crate::ArchiveStore;
    let (s, _dir) = temp_sqlite();
    let a = "a@x.example";
    s.create_account(a, &creds(1)).unwrap();
    s.archive_append(a, &archived("old", "b@x.example", 10))
        .unwrap();
    s.merge_archive_log().unwrap();
    s.archive_append(a, &archived("new", "b@x.example", 20))
        .unwrap();
    let got = s
        .archive_get(a, &["new".to_string(), "old".to_string()])
        .unwrap()
        .unwrap();
    let got: Vec<&str> = got.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(got, ["old", "new"]);
}

fn temp_sqlite() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("strait.db")).unwrap();
    (store, dir)
}

// ---------------------------------------------------------------------------
// SQLite-specific behaviour.

#[test]
fn sqlite_durable_across_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strait.db");
    let (ver, ids) = {
        let s = SqliteStore::open(&path).unwrap();
        s.create_account("a@x.example", &creds(1)).unwrap();
        s.roster_set("a@x.example", &item("b@x.example")).unwrap();
        let ver = s.roster_set("a@x.example", &item("c@x.example")).unwrap();
        let ids: Vec<i64> = (0..3)
            .map(|i| s.offline_push("a@x.example", "<message/>", i, 10).unwrap())
            .collect();
        s.close().unwrap();
        // Every call fails after close, reads and writes alike.
        assert!(matches!(
            s.account_exists("a@x.example"),
            Err(StoreError::Backend(_))
        ));
        assert!(matches!(
            s.create_account("z@x.example", &creds(1)),
            Err(StoreError::Backend(_))
        ));
        s.close().unwrap();
        (ver, ids)
    };
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.credentials("a@x.example").unwrap(), Some(creds(1)));
    let (v, items) = s.roster("a@x.example").unwrap();
    assert_eq!(v, ver);
    assert_eq!(items, [item("b@x.example"), item("c@x.example")]);
    let got: Vec<i64> = s
        .offline_fetch("a@x.example", 10)
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(got, ids);
    // Ids are never reused, even after deleting the newest.
    s.offline_delete("a@x.example", &ids).unwrap();
    drop(s); // Drop closes too.
    let s = SqliteStore::open(&path).unwrap();
    let next = s.offline_push("a@x.example", "<message/>", 0, 10).unwrap();
    assert!(next > *ids.last().unwrap());
}

#[test]
fn sqlite_reopen_without_close_keeps_committed_writes() {
    // Writes are committed when the call returns, even if the process never
    // closes the store: a second handle sees them at once.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strait.db");
    let a = SqliteStore::open(&path).unwrap();
    a.create_account("a@x.example", &creds(1)).unwrap();
    a.offline_push("a@x.example", "<message/>", 0, 10).unwrap();
    let b = SqliteStore::open(&path).unwrap();
    assert_eq!(b.offline_count("a@x.example").unwrap(), 1);
    assert!(b.account_exists("a@x.example").unwrap());
}

#[test]
fn sqlite_schema_version_and_pragmas() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strait.db");
    SqliteStore::open(&path).unwrap().close().unwrap();
    // Re-opening an up-to-date database runs no migration again.
    SqliteStore::open(&path).unwrap().close().unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let v: i64 = conn
        .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, super::sqlite::SCHEMA_VERSION);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    // A database from a newer build is refused.
    conn.execute("UPDATE schema_version SET version = version + 1", [])
        .unwrap();
    drop(conn);
    assert!(matches!(
        SqliteStore::open(&path),
        Err(StoreError::Backend(_))
    ));
}

#[test]
fn sqlite_failed_request_does_not_spoil_its_batch() {
    // Many concurrent requests, some failing: the failures are reported to
    // their callers and the successes are all committed.
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(SqliteStore::open(&dir.path().join("strait.db")).unwrap());
    s.create_account("dup@x.example", &creds(1)).unwrap();
    let handles: Vec<_> = (0..32)
        .map(|t| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                for i in 0..20 {
                    if (t + i) % 2 == 0 {
                        assert!(matches!(
                            s.create_account("dup@x.example", &creds(2)),
                            Err(StoreError::AlreadyExists(_))
                        ));
                    } else {
                        s.create_account(&format!("u{t}-{i}@x.example"), &creds(2))
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(s.list_accounts(None).unwrap().len(), 1 + 32 * 10);
    assert_eq!(s.credentials("dup@x.example").unwrap(), Some(creds(1)));
}

#[test]
fn sqlite_concurrent_writes_are_group_committed() {
    let (s, _dir) = temp_sqlite();
    let s = Arc::new(s);
    s.create_account("a@x.example", &creds(1)).unwrap();
    let before = s.commit_count();
    const THREADS: u64 = 32;
    const PER_THREAD: u64 = 40;
    let barrier = Arc::new(std::sync::Barrier::new(THREADS as usize));
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let s = Arc::clone(&s);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..PER_THREAD {
                    s.offline_push("a@x.example", "<message/>", 0, usize::MAX)
                        .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let commits = s.commit_count() - before;
    assert_eq!(
        s.offline_count("a@x.example").unwrap() as u64,
        THREADS * PER_THREAD
    );
    assert!(
        commits < THREADS * PER_THREAD,
        "{commits} commits for {} writes: no batching",
        THREADS * PER_THREAD
    );
}

#[test]
fn stores_are_usable_as_trait_objects() {
    let stores: Vec<Arc<dyn Store>> = vec![
        Arc::new(MemoryStore::new()),
        Arc::new(SqliteStore::open_in_memory().unwrap()),
    ];
    for s in stores {
        s.create_account("a@x.example", &creds(1)).unwrap();
        assert!(s.account_exists("a@x.example").unwrap());
    }
}

#[test]
fn sqlite_wal_is_checkpointed_in_the_background() {
    // The writer never checkpoints; the checkpoint thread copies committed pages back into
    // the database file while the store is open. Read the file alone (`immutable=1` ignores
    // the WAL) to see that it did.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strait.db");
    let s = SqliteStore::open(&path).unwrap();
    s.create_account("a@x.example", &creds(1)).unwrap();
    for i in 0..50 {
        s.offline_push("a@x.example", &format!("<message id='{i}'/>"), i, 1000)
            .unwrap();
    }
    let in_file = || -> i64 {
        let uri = format!("file:{}?immutable=1", path.display());
        let c = rusqlite::Connection::open_with_flags(
            uri,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
        )
        .unwrap();
        c.query_row("SELECT COUNT(*) FROM offline", [], |r| r.get(0))
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while in_file() < 50 {
        assert!(
            std::time::Instant::now() < deadline,
            "the WAL was not checkpointed into the database file"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // And the store goes on writing meanwhile.
    s.offline_push("a@x.example", "<message id='late'/>", 99, 1000)
        .unwrap();
    assert_eq!(s.offline_count("a@x.example").unwrap(), 51);
    s.close().unwrap();
}

/// Whether every kept count per owner and partner (`archive_with_counts`, migration 9) is the
/// number of that owner's copies with that partner, and every pair with copies has one.
fn with_counts_match(conn: &rusqlite::Connection) -> bool {
    let q = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    let right = q("SELECT COUNT(*) FROM archive_with_counts c
                   WHERE n = (SELECT COUNT(*) FROM archive a
                              WHERE a.owner = c.owner AND a.with_bare = c.with_bare)");
    let kept = q("SELECT COUNT(*) FROM archive_with_counts WHERE n > 0");
    let pairs = q("SELECT COUNT(*) FROM (SELECT DISTINCT owner, with_bare FROM archive)");
    right == q("SELECT COUNT(*) FROM archive_with_counts") && kept == pairs
}

/// A new database file at `path` migrated only to schema `version`, as an earlier build left
/// it, with the accounts `jids`.
fn database_at_version(
    path: &std::path::Path,
    version: usize,
    jids: &[&str],
) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .unwrap();
    super::sqlite::migrate_to(&conn, version).unwrap();
    let v: i64 = conn
        .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, version as i64);
    for jid in jids {
        conn.execute(
            "INSERT INTO accounts (jid, domain, sha256_salt, sha256_iter, sha256_stored,
                 sha256_server) VALUES (?1, 'x.example', x'00', 4096, x'00', x'00')",
            [jid],
        )
        .unwrap();
    }
    conn
}

/// A database of schema version 4 (archive with AUTOINCREMENT and `archive_by_owner`) with
/// archived rows, gaps in `seq` and a `sqlite_sequence` past the last row, opened by this
/// build: the rows come through migration 5 unchanged and in order, page by id as before, and
/// new rows sort after them.
#[test]
fn sqlite_archive_migrates_from_version_4() {
    use crate::{ArchiveQuery, ArchiveStore};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strait.db");
    {
        let conn = database_at_version(&path, 4, &["a@x.example", "b@x.example"]);
        // What version 4 wrote: ids are opaque (UUIDs in practice), seq from AUTOINCREMENT.
        let mut ins = conn
            .prepare(
                "INSERT INTO archive (owner, id, with_bare, with_full, stamp_ms, stanza)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .unwrap();
        for i in 0..30 {
            let (owner, with) = if i % 3 == 2 {
                ("b@x.example", "a@x.example")
            } else {
                (
                    "a@x.example",
                    if i % 2 == 0 {
                        "b@x.example"
                    } else {
                        "c@y.example/r"
                    },
                )
            };
            let m = archived(&format!("old-{i:02}"), with, 1000 + i);
            ins.execute(rusqlite::params![
                owner,
                m.id,
                m.with_bare,
                m.with_full,
                m.stamp_ms,
                m.stanza
            ])
            .unwrap();
        }
        drop(ins);
        // A gap in the middle and the newest row deleted: sqlite_sequence (30) is past
        // max(seq) (29).
        conn.execute("DELETE FROM archive WHERE id IN ('old-10', 'old-29')", [])
            .unwrap();
        conn.execute(
            "INSERT INTO archive_prefs (owner, default_mode, always_jids, never_jids)
             VALUES ('a@x.example', 'roster', 'b@x.example', '')",
            [],
        )
        .unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    let a_ids: Vec<String> = (0..30)
        .filter(|i| i % 3 != 2 && *i != 10)
        .map(|i| format!("old-{i:02}"))
        .collect();
    assert_eq!(s.archive_count("a@x.example").unwrap(), a_ids.len());
    assert_eq!(s.archive_count("b@x.example").unwrap(), 9);
    // Page through a's archive by id, 4 at a time, forwards and backwards.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let p = s
            .archive_query(
                "a@x.example",
                &ArchiveQuery {
                    after_id: after.clone(),
                    max: 4,
                    ..Default::default()
                },
            )
            .unwrap()
            .unwrap();
        assert_eq!(p.count, a_ids.len());
        assert_eq!(p.first_index, after.is_none().then_some(0));
        seen.extend(p.messages.iter().map(|m| m.id.clone()));
        after = p.messages.last().map(|m| m.id.clone());
        if p.complete {
            break;
        }
    }
    assert_eq!(seen, a_ids);
    let mut back = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let p = s
            .archive_query(
                "a@x.example",
                &ArchiveQuery {
                    before_id: before.clone(),
                    from_end: true,
                    max: 4,
                    ..Default::default()
                },
            )
            .unwrap()
            .unwrap();
        // Paging backwards, no page carries an index (the last page's would be count - len).
        assert_eq!(p.first_index, None);
        let mut ids: Vec<String> = p.messages.iter().map(|m| m.id.clone()).collect();
        ids.append(&mut back);
        back = ids;
        before = p.messages.first().map(|m| m.id.clone());
        if p.complete {
            break;
        }
    }
    assert_eq!(back, a_ids);
    // Rows are intact, filters by partner (bare and full) still work.
    let p = s
        .archive_query(
            "a@x.example",
            &ArchiveQuery {
                with: Some("c@y.example/r".into()),
                after_id: Some("old-03".into()),
                max: 2,
                ..Default::default()
            },
        )
        .unwrap()
        .unwrap();
    assert_eq!(page_ids(&p), ["old-07", "old-09"]);
    assert_eq!(p.messages[0], archived("old-07", "c@y.example/r", 1007));
    assert_eq!(p.count, 10);
    assert_eq!(p.first_index, None);
    // A deleted id stays unknown; preferences survived.
    let q = ArchiveQuery {
        after_id: Some("old-10".into()),
        max: 4,
        ..Default::default()
    };
    assert_eq!(s.archive_query("a@x.example", &q).unwrap(), None);
    assert_eq!(s.archive_prefs("a@x.example").unwrap().default, "roster");
    // Ids taken before the migration are still refused; new rows sort after the old ones.
    assert!(matches!(
        s.archive_append("a@x.example", &archived("old-00", "b@x.example", 1)),
        Err(StoreError::AlreadyExists(_))
    ));
    s.archive_append("a@x.example", &archived("new-0", "b@x.example", 1))
        .unwrap();
    let p = s
        .archive_query(
            "a@x.example",
            &ArchiveQuery {
                after_id: Some("old-28".into()),
                max: 4,
                ..Default::default()
            },
        )
        .unwrap()
        .unwrap();
    assert_eq!(page_ids(&p), ["new-0"]);
    s.close().unwrap();
    // The new schema: no AUTOINCREMENT, no archive_by_owner.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let v: i64 = conn
        .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, super::sqlite::SCHEMA_VERSION);
    let sql: String = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'archive'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(!sql.to_ascii_uppercase().contains("AUTOINCREMENT"), "{sql}");
    let mut indexes: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'archive'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    indexes.sort();
    // An index in archive order per owner is back since migration 7 (in time order since
    // migration 8), and each owner's count is kept.
    assert_eq!(
        indexes,
        ["archive_by_id", "archive_by_time", "archive_by_with"]
    );
    // The counts are kept per owner and partner since migration 9 (per owner in 7 and 8).
    let owners: i64 = conn
        .query_row("SELECT COUNT(DISTINCT owner) FROM archive", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(owners > 0);
    assert!(with_counts_match(&conn));
    let seqs: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_sequence WHERE name = 'archive'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(seqs, 0);
}

/// A database of schema version 7, whose archive holds copies stamped out of order (as an
/// earlier build archived them when the clock went back), opened by this build: migration 8
/// lists them by time, counts by time read the new index, and an append after reopening is
/// stamped no earlier than the newest copy already on disk.
#[test]
fn sqlite_archive_migrates_to_time_order() {
    use crate::{ArchiveQuery, ArchiveStore};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strait.db");
    {
        let conn = database_at_version(&path, 7, &["a@x.example"]);
        for (id, stamp) in [("s10", 10), ("s30", 30), ("s20", 20), ("s40", 40)] {
            conn.execute(
                "INSERT INTO archive (owner, id, with_bare, with_full, stamp_ms, stanza)
                 VALUES ('a@x.example', ?1, 'b@x.example', 'b@x.example', ?2, '<message/>')",
                rusqlite::params![id, stamp],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO archive_counts (owner, n) VALUES ('a@x.example', 4)",
            [],
        )
        .unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    let page = |q: ArchiveQuery| {
        s.archive_query("a@x.example", &ArchiveQuery { max: 10, ..q })
            .unwrap()
            .unwrap()
    };
    assert_eq!(
        page_ids(&page(ArchiveQuery::default())),
        ["s10", "s20", "s30", "s40"]
    );
    let from_20 = page(ArchiveQuery {
        start: Some(20),
        end: Some(30),
        ..Default::default()
    });
    assert_eq!((page_ids(&from_20), from_20.count), (vec!["s20", "s30"], 2));
    let after_20 = page(ArchiveQuery {
        after_id: Some("s20".into()),
        ..Default::default()
    });
    assert_eq!(page_ids(&after_20), ["s30", "s40"]);
    // The writer knows nothing of this owner yet: the newest stamp comes from the index.
    s.archive_append("a@x.example", &archived("n35", "b@x.example", 35))
        .unwrap();
    let all = page(ArchiveQuery::default());
    assert_eq!(page_ids(&all), ["s10", "s20", "s30", "s40", "n35"]);
    assert_eq!(all.messages[4].stamp_ms, 40);
    s.close().unwrap();
    // An append still in the log counts too, also after the writer forgot what it knew
    // (another connection's commit makes it start over).
    let s = SqliteStore::open(&path).unwrap();
    s.archive_append("a@x.example", &archived("n50", "b@x.example", 50))
        .unwrap();
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute(
            "INSERT INTO archive_prefs (owner, default_mode, always_jids, never_jids)
             VALUES ('a@x.example', 'always', '', '')",
            [],
        )
        .unwrap();
    s.archive_append("a@x.example", &archived("n45", "b@x.example", 45))
        .unwrap();
    let last = s
        .archive_query(
            "a@x.example",
            &ArchiveQuery {
                from_end: true,
                max: 2,
                ..Default::default()
            },
        )
        .unwrap()
        .unwrap();
    assert_eq!(page_ids(&last), ["n50", "n45"]);
    assert_eq!(last.messages[1].stamp_ms, 50);
}

/// Every archive query runs on an index, never a scan of the table (which holds every
/// account's messages).
#[test]
fn sqlite_archive_queries_search_indexes() {
    let (s, dir) = temp_sqlite();
    s.close().unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("strait.db")).unwrap();
    let plan = |sql: &str| -> String {
        let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows: Vec<String> = st
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        rows.join("; ")
    };
    let range = "(stamp_ms, seq) >= (3, 4) AND (stamp_ms, seq) <= (9, 2)";
    for sql in [
        "SELECT stamp_ms, seq FROM archive WHERE owner = 'a' AND id = 'x'".to_owned(),
        "SELECT max(stamp_ms) FROM archive WHERE owner = 'a'".to_owned(),
        "SELECT COUNT(*) FROM archive WHERE owner = 'a'".to_owned(),
        format!("SELECT COUNT(*) FROM archive WHERE owner = 'a' AND {range}"),
        format!("SELECT COUNT(*) FROM archive WHERE owner = 'a' AND with_bare = 'b' AND {range}"),
        format!("SELECT COUNT(*) FROM archive WHERE owner = 'a' AND with_full = 'b/r' AND {range}"),
        format!(
            "SELECT a.seq, c.stanza FROM archive a JOIN archive_content c ON c.cid = a.content
             WHERE a.seq IN (SELECT seq FROM archive
               WHERE owner = 'a' AND {range} ORDER BY stamp_ms DESC, seq DESC LIMIT 51)
             ORDER BY a.stamp_ms DESC, a.seq DESC"
        ),
        format!(
            "SELECT a.seq, c.stanza FROM archive a JOIN archive_content c ON c.cid = a.content
             WHERE a.seq IN (SELECT seq FROM archive
               WHERE owner = 'a' AND with_bare = 'b' AND {range}
               ORDER BY stamp_ms ASC, seq ASC LIMIT 51)
             ORDER BY a.stamp_ms ASC, a.seq ASC"
        ),
        "DELETE FROM archive WHERE owner = 'a'".to_owned(),
        "DELETE FROM archive_content WHERE cid IN (SELECT content FROM archive WHERE owner = 'a')"
            .to_owned(),
    ] {
        let p = plan(&sql);
        assert!(!p.contains("SCAN"), "{sql}: {p}");
        assert!(p.contains("archive_by_"), "{sql}: {p}");
    }
    // A page is the start of a range of an index in order: no sort of what the range holds
    // (which would cost the archive, not the page). Time bounds are part of the range.
    for (sql, index) in [
        (
            format!(
                "SELECT seq FROM archive WHERE owner = 'a' AND {range}
                 ORDER BY stamp_ms DESC, seq DESC LIMIT 51"
            ),
            "archive_by_time",
        ),
        (
            format!(
                "SELECT seq FROM archive WHERE owner = 'a' AND with_bare = 'b' AND {range}
                 ORDER BY stamp_ms ASC, seq ASC LIMIT 51"
            ),
            "archive_by_with",
        ),
    ] {
        let p = plan(&sql);
        assert!(!p.contains("TEMP B-TREE"), "{sql}: {p}");
        assert!(p.contains(index) && p.contains("stamp_ms>"), "{sql}: {p}");
    }
}

/// The writer remembers which accounts exist (the message path's writes skip the lookup), but
/// never past their removal: through this store, or through another connection to the file.
#[test]
fn sqlite_archive_refuses_an_account_removed_elsewhere() {
    use crate::{ArchiveStore, WriteOp};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strait.db");
    let a = SqliteStore::open(&path).unwrap();
    a.create_account("x@x.example", &creds(1)).unwrap();
    a.create_account("y@x.example", &creds(2)).unwrap();
    a.archive_append("x@x.example", &archived("1", "y@x.example", 1))
        .unwrap();
    a.archive_append("y@x.example", &archived("1", "x@x.example", 1))
        .unwrap();
    // Removed through another connection (as `strait user remove` on a running server).
    let b = SqliteStore::open(&path).unwrap();
    b.remove_account("x@x.example").unwrap();
    b.close().unwrap();
    assert!(matches!(
        a.archive_append("x@x.example", &archived("2", "y@x.example", 2)),
        Err(StoreError::NotFound(_))
    ));
    let push = |owner: &str| WriteOp::OfflinePush {
        owner: owner.into(),
        stanza: "<message/>".into(),
        stamp_ms: 1,
        limit: 10,
        id: None,
    };
    assert!(matches!(
        batch(&a, vec![push("x@x.example")])[..],
        [Err(StoreError::NotFound(_))]
    ));
    // Removed through this store.
    a.remove_account("y@x.example").unwrap();
    assert!(matches!(
        batch(
            &a,
            vec![
                WriteOp::Archive {
                    owner: "y@x.example".into(),
                    msg: archived("2", "x@x.example", 2),
                },
                push("y@x.example")
            ]
        )[..],
        [Err(StoreError::NotFound(_)), Err(StoreError::NotFound(_))]
    ));
    // Re-created: known again, with an empty archive.
    a.create_account("y@x.example", &creds(2)).unwrap();
    a.archive_append("y@x.example", &archived("3", "x@x.example", 3))
        .unwrap();
    assert_eq!(a.archive_count("y@x.example").unwrap(), 1);
}

/// An archive query reads the archive and its owner's copies still in the log without the
/// writer when nothing of its owner's is queued, and waits for the writer's queue (but
/// merges nothing) otherwise: copies appended before it, waited for or not, are always in
/// its result.
#[test]
fn sqlite_archive_query_skips_the_writer_when_its_owner_is_settled() {
    use crate::{ArchiveQuery, ArchiveStore, BatchWrite, WriteOp};
    let (s, dir) = temp_sqlite();
    let path = dir.path().join("strait.db");
    for jid in ["a@x.example", "b@x.example"] {
        s.create_account(jid, &creds(1)).unwrap();
    }
    let ids = |owner: &str| -> Vec<String> {
        let q = ArchiveQuery {
            max: 100,
            ..ArchiveQuery::default()
        };
        let page = s.archive_query(owner, &q).unwrap().unwrap();
        page.messages.into_iter().map(|m| m.id).collect()
    };
    let in_log = || {
        rusqlite::Connection::open(&path)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM archive_log", [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap()
    };
    s.archive_append("a@x.example", &archived("a1", "b@x.example", 1))
        .unwrap();
    // In the log: the query reads it there; the writer neither merges nor commits.
    let before = s.commit_count();
    assert_eq!(ids("a@x.example"), ["a1"]);
    assert_eq!(s.archive_count("a@x.example").unwrap(), 1);
    assert_eq!(s.commit_count(), before);
    assert_eq!(in_log(), 1);
    s.merge_archive_log().unwrap();
    assert_eq!(in_log(), 0);
    // Merged, nothing queued: queries and counts leave the writer alone...
    let before = s.commit_count();
    for _ in 0..5 {
        assert_eq!(ids("a@x.example"), ["a1"]);
        assert_eq!(s.archive_count("a@x.example").unwrap(), 1);
    }
    assert_eq!(s.commit_count(), before);
    // ... also while another owner's copy waits in the log.
    s.archive_append("b@x.example", &archived("b1", "a@x.example", 2))
        .unwrap();
    let before = s.commit_count();
    assert_eq!(ids("a@x.example"), ["a1"]);
    assert_eq!(s.commit_count(), before);
    assert_eq!(in_log(), 1);
    assert_eq!(ids("b@x.example"), ["b1"]);
    // Copies nobody waits for are found by a query right after they were queued, before
    // their commit: the query waits for them.
    for round in 0..20 {
        let copies: Vec<WriteOp> = (0..3)
            .map(|i| WriteOp::Archive {
                owner: "a@x.example".into(),
                msg: archived(&format!("lazy{round}-{i}"), "b@x.example", 10 + round),
            })
            .collect();
        s.write_batch_lazy(copies, Box::new(|o| assert!(o.iter().all(|o| o.is_ok()))));
        let got = ids("a@x.example");
        assert_eq!(got.len(), 1 + 3 * (round as usize + 1), "{got:?}");
        assert_eq!(got.last().unwrap(), &format!("lazy{round}-2"));
    }
}

/// Archived copies wait in `archive_log` until the writer merges them into `archive`: on its
/// own within a second, and at the next open when a crash left some there; queries find
/// them in the log meanwhile. An id is taken from its append on, merged or not, whoever appended it.
#[test]
fn sqlite_archive_log_is_merged_and_its_ids_are_taken() {
    use crate::{ArchiveQuery, ArchiveStore};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strait.db");
    let raw = |sql: &str| -> i64 {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
        c.query_row(sql, [], |r| r.get(0)).unwrap()
    };
    let log_rows = || raw("SELECT COUNT(*) FROM archive_log");
    let query = |s: &SqliteStore| -> Vec<String> {
        let q = ArchiveQuery {
            max: 100,
            ..ArchiveQuery::default()
        };
        let page = s.archive_query("a@x.example", &q).unwrap().unwrap();
        page.messages.into_iter().map(|m| m.id).collect()
    };
    let s = SqliteStore::open(&path).unwrap();
    s.create_account("a@x.example", &creds(1)).unwrap();
    s.archive_append("a@x.example", &archived("m0", "b@x.example", 1))
        .unwrap();
    // Appended to the log, not to the archive...
    assert_eq!(log_rows(), 1);
    assert_eq!(raw("SELECT COUNT(*) FROM archive"), 0);
    // ... where its id is taken all the same.
    assert!(matches!(
        s.archive_append("a@x.example", &archived("m0", "b@x.example", 2)),
        Err(StoreError::AlreadyExists(id)) if id == "m0"
    ));
    // An idle writer merges it within a second or so.
    let start = std::time::Instant::now();
    while log_rows() > 0 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "the writer did not merge the archive log"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(raw("SELECT COUNT(*) FROM archive"), 1);
    // A query sees what was appended just before it, in the log, and the same once merged.
    s.archive_append("a@x.example", &archived("m1", "b@x.example", 3))
        .unwrap();
    assert_eq!(query(&s), ["m0", "m1"]);
    assert_eq!(log_rows(), 1);
    s.merge_archive_log().unwrap();
    assert_eq!(log_rows(), 0);
    assert_eq!(query(&s), ["m0", "m1"]);
    // Another connection appended to the log behind this store's back (another process):
    // the id is taken for this store too. (Its stamps are in time order, as the store's
    // appends keep them.)
    let other = |id: &str, stamp: i64| {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
        c.execute(
            "INSERT INTO archive_content (stanza, refs) VALUES ('<message/>', 1)",
            [],
        )
        .unwrap();
        c.execute(
            "INSERT INTO archive_log (owner, id, with_bare, with_full, stamp_ms, content)
             VALUES ('a@x.example', ?1, 'b@x.example', 'b@x.example', ?2, ?3)",
            rusqlite::params![id, stamp, c.last_insert_rowid()],
        )
        .unwrap();
    };
    other("m2", 4);
    assert!(matches!(
        s.archive_append("a@x.example", &archived("m2", "b@x.example", 5)),
        Err(StoreError::AlreadyExists(id)) if id == "m2"
    ));
    assert_eq!(query(&s), ["m0", "m1", "m2"]);
    s.close().unwrap();
    assert_eq!(log_rows(), 0);
    // Copies a crash left in the log: merged when the store opens, in their order.
    other("m3", 4);
    other("m4", 4);
    let s = SqliteStore::open(&path).unwrap();
    assert!(matches!(
        s.archive_append("a@x.example", &archived("m4", "b@x.example", 6)),
        Err(StoreError::AlreadyExists(id)) if id == "m4"
    ));
    assert_eq!(query(&s), ["m0", "m1", "m2", "m3", "m4"]);
    assert_eq!(s.archive_count("a@x.example").unwrap(), 5);
    // Clearing the archive clears the log too.
    s.archive_append("a@x.example", &archived("m5", "b@x.example", 7))
        .unwrap();
    s.archive_clear("a@x.example").unwrap();
    assert_eq!(s.archive_count("a@x.example").unwrap(), 0);
    assert_eq!(log_rows(), 0);
    s.archive_append("a@x.example", &archived("m5", "b@x.example", 8))
        .unwrap();
    assert_eq!(query(&s), ["m5"]);
    // The owner's kept count follows the merges: copies from another process too...
    other("m6", 9);
    assert_eq!(s.archive_count("a@x.example").unwrap(), 2);
    // ... but not a copy whose id is already taken, which the merge drops: the count is
    // then taken afresh (adding the log's rows would say 3). Before the merge, queries
    // and counts leave it out too: one id taken twice in the log, and one in the archive
    // and in the log.
    other("m5", 9);
    assert_eq!(s.archive_count("a@x.example").unwrap(), 2);
    assert_eq!(query(&s), ["m5", "m6"]);
    assert_eq!(log_rows(), 3);
    s.merge_archive_log().unwrap();
    assert_eq!(log_rows(), 0);
    assert_eq!(s.archive_count("a@x.example").unwrap(), 2);
    assert_eq!(query(&s), ["m5", "m6"]);
    other("m6", 10);
    assert_eq!(s.archive_count("a@x.example").unwrap(), 2);
    assert_eq!(query(&s), ["m5", "m6"]);
    s.merge_archive_log().unwrap();
    assert_eq!(query(&s), ["m5", "m6"]);
    assert!(with_counts_match(
        &rusqlite::Connection::open(&path).unwrap()
    ));
    // The dropped copies' stanzas went with them.
    assert!(content_matches(&rusqlite::Connection::open(&path).unwrap()));
    assert_eq!(raw("SELECT COUNT(*) FROM archive_content"), 2);
    // A query by partner reads its kept count.
    let by_partner = |with: &str| {
        let q = ArchiveQuery {
            with: Some(with.into()),
            max: 1,
            ..ArchiveQuery::default()
        };
        s.archive_query("a@x.example", &q).unwrap().unwrap().count
    };
    assert_eq!(
        (by_partner("b@x.example"), by_partner("z@x.example")),
        (2, 0)
    );
    // Cleared with the archive, stanzas in the log or merged.
    s.archive_append("a@x.example", &archived("m7", "b@x.example", 11))
        .unwrap();
    assert_eq!(log_rows(), 1);
    s.archive_clear("a@x.example").unwrap();
    assert_eq!(
        raw("SELECT COUNT(*) FROM archive_with_counts WHERE owner = 'a@x.example'"),
        0
    );
    assert_eq!(raw("SELECT COUNT(*) FROM archive_content"), 0);
}

/// Whether every archived copy, merged or in the log, refers to a stanza in
/// `archive_content` (migration 10), and every stanza there belongs to a copy.
fn content_matches(conn: &rusqlite::Connection) -> bool {
    let q = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    let dangling = q("SELECT COUNT(*) FROM archive a
                      WHERE NOT EXISTS (SELECT 1 FROM archive_content c WHERE c.cid = a.content)")
        + q("SELECT COUNT(*) FROM archive_log l
             WHERE NOT EXISTS (SELECT 1 FROM archive_content c WHERE c.cid = l.content)");
    let orphans = q("SELECT COUNT(*) FROM archive_content c
                     WHERE NOT EXISTS (SELECT 1 FROM archive a WHERE a.content = c.cid)
                       AND NOT EXISTS (SELECT 1 FROM archive_log l WHERE l.content = c.cid)");
    // Each stanza counts the copies that refer to it (one copy: one owner and id, whether
    // merged, in the log, or both halfway through a merge round).
    let miscounted = q("SELECT COUNT(*) FROM archive_content c
                        WHERE refs != (SELECT COUNT(*) FROM (
                            SELECT owner, id FROM archive WHERE content = c.cid
                            UNION SELECT owner, id FROM archive_log WHERE content = c.cid))");
    dangling == 0 && orphans == 0 && miscounted == 0
}

/// A merge moves the log owner by owner (`merge_archive_log`): each owner's archive keeps
/// the order its copies were appended in, across owners interleaved in the log, ids that
/// sort otherwise and several merges, with and without a partner filter.
#[test]
fn sqlite_archive_merge_keeps_each_owners_append_order() {
    use crate::{ArchiveQuery, ArchiveStore};
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("strait.db")).unwrap();
    let owners = ["c@x.example", "a@x.example", "b@x.example"];
    for o in owners {
        s.create_account(o, &creds(1)).unwrap();
    }
    let page = |owner: &str, with: Option<&str>| -> Vec<String> {
        let q = ArchiveQuery {
            max: 1_000,
            with: with.map(str::to_owned),
            ..ArchiveQuery::default()
        };
        let p = s.archive_query(owner, &q).unwrap().unwrap();
        p.messages.into_iter().map(|m| m.id).collect()
    };
    let mut expected: std::collections::HashMap<&str, Vec<String>> = Default::default();
    let mut expected_with_p: std::collections::HashMap<&str, Vec<String>> = Default::default();
    for round in 0..3 {
        for i in 0..60 {
            // Owners interleave; ids descend, so that neither id nor owner order is the
            // append order; every fifth copy is with `p`.
            let owner = owners[(i * 7 + round) % 3];
            let id = format!("{:04}-{round}", 9_999 - (round * 100 + i));
            let with = if i % 5 == 0 {
                "p@x.example"
            } else {
                "q@x.example"
            };
            s.archive_append(owner, &archived(&id, with, 1_000 + i as i64))
                .unwrap();
            expected.entry(owner).or_default().push(id.clone());
            if with == "p@x.example" {
                expected_with_p.entry(owner).or_default().push(id);
            }
        }
        // Read where they are (this round's in the log), then merged: the same.
        for merged in [false, true] {
            if merged {
                s.merge_archive_log().unwrap();
            }
            for o in owners {
                let at = format!("round {round}, merged {merged}");
                assert_eq!(page(o, None), expected[o], "{o}'s archive, {at}");
                assert_eq!(
                    page(o, Some("p@x.example")),
                    expected_with_p.get(o).cloned().unwrap_or_default(),
                    "{o}'s archive with p, {at}"
                );
                assert_eq!(s.archive_count(o).unwrap(), expected[o].len(), "{at}");
            }
        }
    }
}

/// Paging through an archive from anywhere, forwards and backwards, with and without
/// filters, with copies merged and copies still in the archive log: the SQLite store gives
/// the same pages, counts and positions as the in-memory store.
#[test]
fn sqlite_archive_pages_match_the_reference_everywhere() {
    use crate::{ArchiveQuery, ArchiveStore};
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("strait.db")).unwrap();
    // The same copies, never merged until the end.
    let s_log = SqliteStore::open(&dir.path().join("log.db")).unwrap();
    let m = MemoryStore::new();
    for jid in ["a@x.example", "b@x.example"] {
        s.create_account(jid, &creds(1)).unwrap();
        s_log.create_account(jid, &creds(1)).unwrap();
        m.create_account(jid, &creds(1)).unwrap();
    }
    let mut ids = Vec::new();
    for i in 0..400 {
        // Owners interleave, as they do in one table, and `a` talks to three partners.
        let owner = if i % 3 == 0 {
            "b@x.example"
        } else {
            "a@x.example"
        };
        let with = ["c@x.example", "d@x.example/r", "e@y.example"][i % 3 % 2 + (i / 7) % 2];
        // Four copies a millisecond, and now and then a stamp from the past (stored as the
        // owner's newest).
        let back = if i % 11 == 5 { 3 } else { 0 };
        let msg = archived(&format!("m{i:03}"), with, 1_000 + i as i64 / 4 - back);
        s.archive_append(owner, &msg).unwrap();
        s_log.archive_append(owner, &msg).unwrap();
        m.archive_append(owner, &msg).unwrap();
        if owner == "a@x.example" {
            ids.push(msg.id);
        }
        // Some merged on the way, some still in the log.
        if i == 150 {
            s.merge_archive_log().unwrap();
        }
    }
    // `s` merged a's first 100 copies (m000..m149); ids[100] is the first in its log.
    assert_eq!((ids[99].as_str(), ids[100].as_str()), ("m149", "m151"));
    assert_eq!(
        s.archive_count("a@x.example").unwrap(),
        m.archive_count("a@x.example").unwrap()
    );
    let mut queries = Vec::new();
    for id in [
        None,
        Some(0),
        Some(1),
        Some(99),
        Some(100),
        Some(101),
        Some(130),
        Some(ids.len() - 2),
        Some(ids.len() - 1),
    ] {
        for with in [None, Some("c@x.example"), Some("d@x.example/r")] {
            let id = id.map(|i| ids[i].clone());
            let with = with.map(str::to_owned);
            queries.push(ArchiveQuery {
                with: with.clone(),
                after_id: id.clone(),
                max: 20,
                ..ArchiveQuery::default()
            });
            queries.push(ArchiveQuery {
                with: with.clone(),
                before_id: id.clone(),
                from_end: id.is_none(),
                max: 20,
                ..ArchiveQuery::default()
            });
            queries.push(ArchiveQuery {
                with: with.clone(),
                after_id: id.clone(),
                start: Some(1_030),
                max: 7,
                ..ArchiveQuery::default()
            });
            queries.push(ArchiveQuery {
                with: with.clone(),
                before_id: id.clone(),
                from_end: id.is_none(),
                start: Some(1_010),
                end: Some(1_060),
                max: 9,
                ..ArchiveQuery::default()
            });
            queries.push(ArchiveQuery {
                with,
                after_id: id,
                end: Some(1_040),
                max: 300,
                ..ArchiveQuery::default()
            });
        }
    }
    // By the partner's domain (a provider's chats), alone and with the other filters.
    let by_domain: Vec<ArchiveQuery> = queries
        .iter()
        .filter(|q| q.with.is_none())
        .flat_map(|q| {
            [
                vec!["y.example".to_owned()],
                vec!["nope.example".into(), "x.example".into()],
            ]
            .map(|d| ArchiveQuery {
                with_domains: d,
                ..q.clone()
            })
        })
        .collect();
    queries.extend(by_domain);
    let third_party = ArchiveQuery {
        with_domains: vec!["y.example".into()],
        max: 1000,
        ..ArchiveQuery::default()
    };
    let page = m
        .archive_query("a@x.example", &third_party)
        .unwrap()
        .unwrap();
    assert!(page.count > 20 && page.count < ids.len(), "{}", page.count);
    assert!(page.messages.iter().all(|m| m.with_bare == "e@y.example"));
    // Ids nobody archived (in `a`'s archive: `b`'s are not).
    for id in ["m000", "nope"] {
        queries.push(ArchiveQuery {
            after_id: Some(id.into()),
            max: 5,
            ..ArchiveQuery::default()
        });
        queries.push(ArchiveQuery {
            before_id: Some(id.into()),
            max: 5,
            ..ArchiveQuery::default()
        });
    }
    // Both ids: across the merged copies and the log, and inside either.
    for (a, b) in [(50, 150), (10, 60), (120, 200), (150, 50)] {
        queries.push(ArchiveQuery {
            after_id: Some(ids[a].clone()),
            before_id: Some(ids[b].clone()),
            max: 30,
            ..ArchiveQuery::default()
        });
    }
    for merged in [false, true] {
        if merged {
            s.merge_archive_log().unwrap();
            s_log.merge_archive_log().unwrap();
        }
        for (name, store) in [("partly merged", &s), ("log", &s_log)] {
            for q in &queries {
                let got = store.archive_query("a@x.example", q).unwrap();
                let want = m.archive_query("a@x.example", q).unwrap();
                assert_eq!(got, want, "{name}, merged {merged}: {q:?}");
            }
        }
    }
    // Cleared: counted as empty, and counted again from zero.
    s.archive_clear("a@x.example").unwrap();
    assert_eq!(s.archive_count("a@x.example").unwrap(), 0);
    s.archive_append("a@x.example", &archived("n1", "c@x.example", 5))
        .unwrap();
    let page = s
        .archive_query(
            "a@x.example",
            &ArchiveQuery {
                max: 10,
                ..ArchiveQuery::default()
            },
        )
        .unwrap()
        .unwrap();
    assert_eq!((page.count, page.first_index), (1, Some(0)));
    assert_eq!(
        s.archive_count("b@x.example").unwrap(),
        m.archive_count("b@x.example").unwrap()
    );
    // `a`'s stanzas went with its archive, merged or in the log; `b`'s stayed.
    s.merge_archive_log().unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("strait.db")).unwrap();
    assert!(content_matches(&conn));
    let stanzas: i64 = conn
        .query_row("SELECT COUNT(*) FROM archive_content", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        stanzas as usize,
        1 + m.archive_count("b@x.example").unwrap()
    );
}

/// A database of schema version 9, with copies merged into `archive` and copies still in
/// `archive_log` (a crash left them there), opened by this build: migration 10 moves every
/// stanza into `archive_content` once (and 11 counts one copy for each), pages give back the
/// same stanzas, a new copy's stanza does not take an old one's place, and removing an
/// account removes its stanzas.
#[test]
fn sqlite_archive_migrates_to_stanzas_written_once() {
    use crate::{AccountStore, ArchiveQuery, ArchiveStore};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strait.db");
    let mut want = Vec::new();
    {
        let conn = database_at_version(&path, 9, &["a@x.example", "b@x.example"]);
        for (table, owner, i) in [
            ("archive", "a@x.example", 0),
            ("archive", "b@x.example", 1),
            ("archive", "a@x.example", 2),
            ("archive_log", "a@x.example", 3),
            ("archive_log", "b@x.example", 4),
            ("archive_log", "a@x.example", 5),
        ] {
            let m = archived(&format!("v9-{i}"), "c@x.example", 100 + i);
            conn.execute(
                &format!(
                    "INSERT INTO {table} (owner, id, with_bare, with_full, stamp_ms, stanza)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
                ),
                rusqlite::params![owner, m.id, m.with_bare, m.with_full, m.stamp_ms, m.stanza],
            )
            .unwrap();
            if owner == "a@x.example" {
                want.push(m);
            }
        }
        conn.execute(
            "INSERT INTO archive_with_counts (owner, with_bare, n)
             VALUES ('a@x.example', 'c@x.example', 2), ('b@x.example', 'c@x.example', 1)",
            [],
        )
        .unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    let all = |s: &SqliteStore| {
        s.archive_query(
            "a@x.example",
            &ArchiveQuery {
                max: 10,
                ..ArchiveQuery::default()
            },
        )
        .unwrap()
        .unwrap()
    };
    // The store merged what the log held when it opened; every stanza came through.
    assert_eq!(all(&s).messages, want);
    let fresh = archived("new", "c@x.example", 200);
    s.archive_append("a@x.example", &fresh).unwrap();
    want.push(fresh);
    assert_eq!(all(&s).messages, want);
    s.merge_archive_log().unwrap();
    assert_eq!(all(&s).messages, want);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert!(content_matches(&conn));
    assert_eq!(count("SELECT COUNT(*) FROM archive_content"), 7);
    assert_eq!(count("SELECT COUNT(*) FROM archive"), 7);
    // No stanza is left inline.
    let columns = |table: &str| -> String {
        conn.query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert!(!columns("archive").contains("stanza"));
    assert!(!columns("archive_log").contains("stanza"));
    s.remove_account("a@x.example").unwrap();
    assert!(content_matches(&conn));
    assert_eq!(count("SELECT COUNT(*) FROM archive_content"), 2);
    assert_eq!(s.archive_count("b@x.example").unwrap(), 2);
}

/// The sender's and the recipient's copies of one message, appended one after the other in
/// one batch with the same stanza, share one stored stanza (schema 10's `archive_content`,
/// counted by `refs`); each owner's pages give it back, merged or not, and it goes only when
/// the last copy referring to it does. Copies of one owner, or not next to each other, do
/// not share.
#[test]
fn sqlite_archive_copies_of_one_message_share_their_stanza() {
    use crate::{AccountStore, ArchiveQuery, ArchiveStore, BatchWrite, WriteOp};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strait.db");
    let s = SqliteStore::open(&path).unwrap();
    for jid in ["a@x.example", "b@x.example"] {
        s.create_account(jid, &creds(1)).unwrap();
    }
    let batch = |ops: Vec<WriteOp>| {
        let (tx, rx) = std::sync::mpsc::channel();
        s.write_batch(ops, Box::new(move |o| tx.send(o).unwrap()));
        let outcomes = rx.recv().unwrap();
        assert!(outcomes.iter().all(|o| o.is_ok()), "{outcomes:?}");
    };
    let copy = |owner: &str, id: &str, with: &str, stanza: &str, stamp: i64| WriteOp::Archive {
        owner: owner.to_owned(),
        msg: crate::ArchivedMessage {
            stanza: stanza.to_owned(),
            ..archived(id, with, stamp)
        },
    };
    let stanza = |i: usize| format!("<message id='m{i}'><body>{i}</body></message>");
    for i in 0..10 {
        batch(vec![
            copy(
                "a@x.example",
                &format!("a{i}"),
                "b@x.example",
                &stanza(i),
                i as i64,
            ),
            copy(
                "b@x.example",
                &format!("b{i}"),
                "a@x.example",
                &stanza(i),
                i as i64,
            ),
        ]);
        if i == 4 {
            s.merge_archive_log().unwrap();
        }
    }
    // Not shared: two copies of one owner, and copies with another op between them.
    batch(vec![
        copy(
            "a@x.example",
            "a-x1",
            "b@x.example",
            "<message id='x'/>",
            20,
        ),
        copy(
            "a@x.example",
            "a-x2",
            "b@x.example",
            "<message id='x'/>",
            20,
        ),
        WriteOp::OfflineDelete {
            owner: "b@x.example".into(),
            ids: vec![],
        },
        copy("b@x.example", "b-x", "a@x.example", "<message id='x'/>", 20),
    ]);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(count("SELECT COUNT(*) FROM archive_content"), 10 + 3);
    assert_eq!(
        count("SELECT COUNT(*) FROM archive_content WHERE refs = 2"),
        10
    );
    assert!(content_matches(&conn));
    let stanzas = |owner: &str| -> Vec<String> {
        let q = ArchiveQuery {
            max: 100,
            ..ArchiveQuery::default()
        };
        let page = s.archive_query(owner, &q).unwrap().unwrap();
        page.messages.into_iter().map(|m| m.stanza).collect()
    };
    let mut want: Vec<String> = (0..10).map(stanza).collect();
    assert_eq!(stanzas("b@x.example")[..10], want[..]);
    want.extend([
        "<message id='x'/>".to_owned(),
        "<message id='x'/>".to_owned(),
    ]);
    assert_eq!(stanzas("a@x.example"), want);
    // One side clears its archive (half merged, half in the log): the other keeps every
    // stanza.
    s.archive_clear("a@x.example").unwrap();
    assert!(content_matches(&conn));
    assert_eq!(count("SELECT COUNT(*) FROM archive_content"), 10 + 1);
    assert_eq!(stanzas("b@x.example").len(), 11);
    assert_eq!(stanzas("b@x.example")[..10], want[..10]);
    s.merge_archive_log().unwrap();
    assert_eq!(stanzas("b@x.example")[..10], want[..10]);
    s.remove_account("b@x.example").unwrap();
    assert_eq!(count("SELECT COUNT(*) FROM archive_content"), 0);
}

/// A database of schema version 10 (each stanza stored once, but one per copy), opened by
/// this build: migration 11 counts one copy for each stored stanza, so deleting one owner's
/// archive deletes its stanzas and leaves the other owner's.
#[test]
fn sqlite_archive_migrates_to_shared_stanzas() {
    use crate::{ArchiveQuery, ArchiveStore};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strait.db");
    {
        let conn = database_at_version(&path, 10, &["a@x.example", "b@x.example"]);
        for (i, (table, owner)) in [
            ("archive", "a@x.example"),
            ("archive", "b@x.example"),
            ("archive_log", "a@x.example"),
            ("archive_log", "b@x.example"),
        ]
        .into_iter()
        .enumerate()
        {
            conn.execute(
                "INSERT INTO archive_content (stanza) VALUES (?1)",
                [format!("<message id='v10-{i}'/>")],
            )
            .unwrap();
            conn.execute(
                &format!(
                    "INSERT INTO {table} (owner, id, with_bare, with_full, stamp_ms, content)
                     VALUES (?1, ?2, 'c@x.example', 'c@x.example', ?3, ?4)"
                ),
                rusqlite::params![
                    owner,
                    format!("v10-{i}"),
                    i as i64,
                    conn.last_insert_rowid()
                ],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO archive_with_counts (owner, with_bare, n)
             VALUES ('a@x.example', 'c@x.example', 1), ('b@x.example', 'c@x.example', 1)",
            [],
        )
        .unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(
        count("SELECT COUNT(*) FROM archive_content WHERE refs = 1"),
        4
    );
    assert!(content_matches(&conn));
    let page = s
        .archive_query(
            "b@x.example",
            &ArchiveQuery {
                max: 10,
                ..ArchiveQuery::default()
            },
        )
        .unwrap()
        .unwrap();
    let stanzas: Vec<&str> = page.messages.iter().map(|m| m.stanza.as_str()).collect();
    assert_eq!(stanzas, ["<message id='v10-1'/>", "<message id='v10-3'/>"]);
    s.archive_clear("a@x.example").unwrap();
    assert_eq!(count("SELECT COUNT(*) FROM archive_content"), 2);
    assert!(content_matches(&conn));
}
