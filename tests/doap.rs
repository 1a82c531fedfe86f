//! Keeps `strait.doap` honest: it is well-formed DOAP with the XEP-0453 extension, the README's
//! "Supported specifications" tables list the same XEPs at the same versions, and every
//! feature a live server advertises (disco#info on the server and on an account, stream
//! features at each stage) belongs to a specification the DOAP claims. A namespace missing
//! from [`SPEC_OF`] fails the test: a new feature has to be added there and to the DOAP.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use strait_tests::{DOMAIN, RawClient, TestServer};

const RDF: &str = "http://www.w3.org/1999/02/22-rdf-syntax-ns#";
const DOAP: &str = "http://usefulinc.com/ns/doap#";
const XMPP: &str = "https://linkmauve.fr/ns/xmpp-doap#";
const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const STREAMS: &str = "http://etherx.jabber.org/streams";
/// The `xmpp:status` values XEP-0453 defines.
const STATUSES: &[&str] = &[
    "complete",
    "partial",
    "planned",
    "deprecated",
    "removed",
    "wontfix",
];

/// Where an advertised namespace comes from.
#[derive(Debug, Clone, Copy)]
enum Spec {
    Xep(u16),
    Rfc(u32),
    /// Known and deliberately not claimed in the DOAP (the reason is the text).
    NotClaimed(&'static str),
}
use Spec::*;

/// Every feature (disco `var` or stream-feature namespace) the server may advertise.
/// `urn:xmpp:mam:2#extended` is left out on purpose: advertising it must come with a DOAP
/// note that no longer says it is missing.
const SPEC_OF: &[(&str, Spec)] = &[
    // Stream features.
    ("urn:ietf:params:xml:ns:xmpp-tls", Rfc(6120)),
    ("urn:ietf:params:xml:ns:xmpp-sasl", Rfc(6120)),
    ("urn:ietf:params:xml:ns:xmpp-bind", Rfc(6120)),
    (
        "urn:ietf:params:xml:ns:xmpp-session",
        NotClaimed("RFC 3921 session establishment, offered as optional for old clients"),
    ),
    (
        "urn:strait:interop:0",
        NotClaimed(
            "Strait's own interop protocol (consent, origin stamps), specified in docs/interop.md",
        ),
    ),
    ("urn:xmpp:features:rosterver", Rfc(6121)),
    ("urn:xmpp:csi:0", Xep(352)),
    ("urn:xmpp:sm:3", Xep(198)),
    // Service discovery.
    ("http://jabber.org/protocol/disco#info", Xep(30)),
    ("http://jabber.org/protocol/disco#items", Xep(30)),
    ("jabber:iq:roster", Rfc(6121)),
    ("jabber:iq:version", Xep(92)),
    ("urn:xmpp:ping", Xep(199)),
    ("msgoffline", Xep(160)),
    ("urn:xmpp:delay", Xep(203)),
    ("vcard-temp", Xep(54)),
    ("jabber:iq:private", Xep(49)),
    ("jabber:iq:register", Xep(77)),
    ("urn:xmpp:push:0", Xep(357)),
    ("http://jabber.org/protocol/caps", Xep(115)),
    ("urn:xmpp:pep-vcard-conversion:0", Xep(398)),
    ("urn:xmpp:carbons:2", Xep(280)),
    ("urn:xmpp:blocking", Xep(191)),
    ("urn:xmpp:reporting:1", Xep(377)),
    ("urn:xmpp:sid:0", Xep(359)),
    ("urn:xmpp:mam:2", Xep(313)),
    ("urn:xmpp:mam:2#extended", Xep(313)),
    ("urn:xmpp:http:upload:0", Xep(363)),
    ("http://jabber.org/protocol/pubsub", Xep(60)),
    ("http://jabber.org/protocol/pubsub#publish", Xep(60)),
    ("http://jabber.org/protocol/pubsub#publish-options", Xep(60)),
    ("http://jabber.org/protocol/pubsub#auto-create", Xep(60)),
    ("http://jabber.org/protocol/pubsub#create-nodes", Xep(60)),
    ("http://jabber.org/protocol/pubsub#config-node", Xep(60)),
    ("http://jabber.org/protocol/pubsub#delete-nodes", Xep(60)),
    ("http://jabber.org/protocol/pubsub#retract-items", Xep(60)),
    ("http://jabber.org/protocol/pubsub#retrieve-items", Xep(60)),
    (
        "http://jabber.org/protocol/pubsub#persistent-items",
        Xep(60),
    ),
    ("http://jabber.org/protocol/pubsub#multi-items", Xep(60)),
    ("http://jabber.org/protocol/pubsub#item-ids", Xep(60)),
    ("http://jabber.org/protocol/pubsub#access-open", Xep(60)),
    ("http://jabber.org/protocol/pubsub#access-presence", Xep(60)),
    (
        "http://jabber.org/protocol/pubsub#access-whitelist",
        Xep(60),
    ),
    ("http://jabber.org/protocol/pubsub#last-published", Xep(60)),
    (
        "http://jabber.org/protocol/pubsub#presence-notifications",
        Xep(60),
    ),
];

/// Disco identities (category, type) the server may show.
const IDENTITY_SPEC: &[((&str, &str), Spec)] = &[
    (("server", "im"), Xep(30)),
    (("account", "registered"), Xep(30)),
    (("pubsub", "pep"), Xep(163)),
    (("store", "file"), Xep(363)),
];

fn repo_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SupportedXep {
    version: String,
    status: String,
}

struct Doap {
    xeps: BTreeMap<u16, SupportedXep>,
    rfcs: BTreeSet<u32>,
}

fn text_of(node: roxmltree::Node, ns: &str, name: &str) -> Option<String> {
    node.children()
        .find(|c| c.has_tag_name((ns, name)))
        .and_then(|c| c.text())
        .map(|t| t.trim().to_owned())
}

/// Parses `strait.doap`, panicking with every problem found.
fn doap() -> Doap {
    let text = repo_file("strait.doap");
    let doc = roxmltree::Document::parse(&text).expect("strait.doap is well-formed XML");
    let root = doc.root_element();
    assert!(root.has_tag_name((RDF, "RDF")), "root is rdf:RDF");
    let projects: Vec<_> = root
        .children()
        .filter(|n| n.has_tag_name((DOAP, "Project")))
        .collect();
    assert_eq!(projects.len(), 1, "one doap:Project");
    let project = projects[0];
    assert_eq!(text_of(project, DOAP, "name").as_deref(), Some("Strait"));
    assert_eq!(
        text_of(project, DOAP, "programming-language").as_deref(),
        Some("Rust")
    );
    assert!(
        text_of(project, DOAP, "description").is_some_and(|d| d.starts_with("Strait is ")),
        "the description is the README's first paragraph"
    );
    let licenses: BTreeSet<_> = project
        .children()
        .filter(|n| n.has_tag_name((DOAP, "license")))
        .filter_map(|n| n.attribute((RDF, "resource")))
        .collect();
    assert_eq!(
        licenses,
        BTreeSet::from([
            "https://spdx.org/licenses/Apache-2.0.html",
            "https://spdx.org/licenses/MIT.html"
        ]),
        "MIT OR Apache-2.0, as the workspace Cargo.toml says"
    );

    let mut problems = Vec::new();
    let mut xeps = BTreeMap::new();
    let mut rfcs = BTreeSet::new();
    for implements in project
        .children()
        .filter(|n| n.has_tag_name((DOAP, "implements")))
    {
        if let Some(url) = implements.attribute((RDF, "resource")) {
            match url
                .strip_prefix("https://www.rfc-editor.org/info/rfc")
                .and_then(|n| n.parse().ok())
            {
                Some(n) => {
                    rfcs.insert(n);
                }
                None => problems.push(format!("implements {url}: not an RFC URL")),
            }
            continue;
        }
        let supported: Vec<_> = implements.children().filter(|n| n.is_element()).collect();
        let [s] = supported.as_slice() else {
            problems.push(format!(
                "an implements without rdf:resource holds {} elements",
                supported.len()
            ));
            continue;
        };
        if !s.has_tag_name((XMPP, "SupportedXep")) {
            problems.push(format!("implements holds {:?}", s.tag_name()));
            continue;
        }
        let url = s
            .children()
            .find(|c| c.has_tag_name((XMPP, "xep")))
            .and_then(|c| c.attribute((RDF, "resource")));
        let number = url.and_then(|u| {
            let digits = u
                .strip_prefix("https://xmpp.org/extensions/xep-")?
                .strip_suffix(".html")?;
            (digits.len() == 4).then(|| digits.parse::<u16>().ok())?
        });
        let Some(number) = number else {
            problems.push(format!("SupportedXep with xep {url:?}"));
            continue;
        };
        let version = text_of(*s, XMPP, "version").unwrap_or_default();
        let status = text_of(*s, XMPP, "status").unwrap_or_default();
        if version.is_empty() || !version.starts_with(|c: char| c.is_ascii_digit()) {
            problems.push(format!("XEP-{number:04}: version {version:?}"));
        }
        if !STATUSES.contains(&status.as_str()) {
            problems.push(format!("XEP-{number:04}: status {status:?}"));
        }
        if text_of(*s, XMPP, "note").is_none_or(|n| n.is_empty()) {
            problems.push(format!("XEP-{number:04}: no note"));
        }
        if xeps
            .insert(number, SupportedXep { version, status })
            .is_some()
        {
            problems.push(format!("XEP-{number:04} listed twice"));
        }
    }
    assert!(problems.is_empty(), "strait.doap: {problems:#?}");
    Doap { xeps, rfcs }
}

#[test]
fn doap_lists_every_xep_with_version_and_status() {
    let d = doap();
    assert!(d.xeps.len() >= 20, "{:?}", d.xeps.keys());
    for rfc in [6120, 6121, 7622] {
        assert!(d.rfcs.contains(&rfc), "RFC {rfc} missing from {:?}", d.rfcs);
    }
}

/// The README section, from its heading to the next one.
fn readme_section() -> String {
    let readme = repo_file("README.md");
    let start = readme
        .find("\n## Supported specifications\n")
        .expect("README has a \"Supported specifications\" section");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_owned()
}

#[test]
fn readme_tables_match_the_doap() {
    let section = readme_section();
    let mut readme = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| [XEP-")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        assert!(cells.len() >= 5, "table row {line:?}");
        let number: u16 = cells[1]["[XEP-".len()..]
            .get(..4)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no XEP number in {line:?}"));
        assert!(
            cells[1].contains(&format!(
                "(https://xmpp.org/extensions/xep-{number:04}.html)"
            )),
            "link of XEP-{number:04}: {line:?}"
        );
        let entry = SupportedXep {
            version: cells[2].to_owned(),
            status: cells[3].to_owned(),
        };
        assert!(
            readme.insert(number, entry).is_none(),
            "XEP-{number:04} twice in the README"
        );
    }
    let d = doap();
    let numbers: BTreeSet<_> = readme.keys().chain(d.xeps.keys()).collect();
    let differences: Vec<_> = numbers
        .into_iter()
        .filter(|n| readme.get(n) != d.xeps.get(n))
        .map(|n| {
            format!(
                "XEP-{n:04}: README {:?}, strait.doap {:?}",
                readme.get(n),
                d.xeps.get(n)
            )
        })
        .collect();
    assert!(differences.is_empty(), "{differences:#?}");
    for rfc in &d.rfcs {
        assert!(
            section.contains(&format!("RFC {rfc}")),
            "RFC {rfc} is in strait.doap but not in the README section"
        );
    }
    assert!(
        section.contains("strait.doap"),
        "the section points to the DOAP"
    );
}

/// Namespaces of the children of the `<stream:features/>` in `received`.
fn stream_features(received: &str) -> Vec<String> {
    let start = received
        .find("<stream:features")
        .unwrap_or_else(|| panic!("no stream features in {received:?}"));
    let wrapped = format!("<w xmlns:stream='{STREAMS}'>{}</w>", &received[start..]);
    let doc = roxmltree::Document::parse(&wrapped)
        .unwrap_or_else(|e| panic!("stream features {wrapped:?}: {e}"));
    let features = doc
        .descendants()
        .find(|n| n.has_tag_name((STREAMS, "features")))
        .expect("stream:features");
    features
        .children()
        .filter(|n| n.is_element())
        .map(|n| n.tag_name().namespace().unwrap_or("").to_owned())
        .collect()
}

/// Sends a disco#info query to `to`; returns the identities and features of the answer.
async fn disco_info(c: &mut RawClient, to: &str, id: &str) -> (Vec<(String, String)>, Vec<String>) {
    c.send(&format!(
        "<iq type='get' id='{id}' to='{to}'><query xmlns='{DISCO_INFO}'/></iq>"
    ))
    .await;
    let iq = c.expect_element(&["<iq", &format!("id='{id}'")]).await;
    let doc = roxmltree::Document::parse(&iq).unwrap_or_else(|e| panic!("{iq}: {e}"));
    assert_eq!(
        doc.root_element().attribute("type"),
        Some("result"),
        "disco#info to {to}: {iq}"
    );
    let query = doc
        .descendants()
        .find(|n| n.has_tag_name((DISCO_INFO, "query")))
        .unwrap_or_else(|| panic!("no query in {iq}"));
    let identities = query
        .children()
        .filter(|n| n.has_tag_name((DISCO_INFO, "identity")))
        .map(|n| {
            (
                n.attribute("category").unwrap_or("").to_owned(),
                n.attribute("type").unwrap_or("").to_owned(),
            )
        })
        .collect();
    let features = query
        .children()
        .filter(|n| n.has_tag_name((DISCO_INFO, "feature")))
        .map(|n| n.attribute("var").unwrap_or("").to_owned())
        .collect();
    (identities, features)
}

#[tokio::test]
async fn advertised_features_belong_to_specifications_in_the_doap() {
    let t = TestServer::start(|_| {}).await;
    t.add_user("alice@localhost", "pa");
    // (where it was seen, what) for every advertised feature.
    let mut seen: Vec<(String, String)> = Vec::new();

    // Before TLS.
    let mut plain = RawClient::connect(t.starttls, t.ca_pem()).await;
    let f = plain.open_stream(DOMAIN).await;
    seen.extend(
        stream_features(&f)
            .into_iter()
            .map(|ns| ("stream features before TLS".into(), ns)),
    );
    drop(plain);

    // After TLS, after authentication, then a bound session.
    let mut c = RawClient::connect(t.starttls, t.ca_pem()).await;
    let f = c.starttls(DOMAIN).await;
    seen.extend(
        stream_features(&f)
            .into_iter()
            .map(|ns| ("stream features after TLS".into(), ns)),
    );
    let r = c.scram_sha256("alice", "pa").await;
    assert!(r.contains("<success"), "{r}");
    let f = c.open_stream(DOMAIN).await;
    seen.extend(
        stream_features(&f)
            .into_iter()
            .map(|ns| ("stream features after SASL".into(), ns)),
    );
    c.send("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>doap</resource></bind></iq>")
        .await;
    let bound = c.expect_element(&["<iq", "id='b1'"]).await;
    assert!(bound.contains("type='result'"), "{bound}");

    let mut identities = Vec::new();
    for (to, id) in [
        (DOMAIN, "server"),
        ("alice@localhost", "account"),
        ("upload.localhost", "upload"),
    ] {
        let (ids, features) = disco_info(&mut c, to, id).await;
        assert!(!features.is_empty(), "{to} advertises nothing");
        identities.extend(ids.into_iter().map(|i| (to.to_owned(), i)));
        seen.extend(
            features
                .into_iter()
                .map(|f| (format!("disco#info of {to}"), f)),
        );
    }
    t.stop().await;
    // Guard against passing on an empty or mis-parsed answer.
    for expected in [
        "urn:ietf:params:xml:ns:xmpp-tls",
        "urn:ietf:params:xml:ns:xmpp-sasl",
        "urn:ietf:params:xml:ns:xmpp-bind",
        "jabber:iq:roster",
        "urn:xmpp:mam:2",
        "http://jabber.org/protocol/pubsub",
        "urn:xmpp:http:upload:0",
    ] {
        assert!(
            seen.iter().any(|(_, ns)| ns == expected),
            "{expected} not seen in {seen:#?}"
        );
    }
    assert!(
        identities
            .iter()
            .any(|(_, (c, t))| c == "pubsub" && t == "pep"),
        "{identities:?}"
    );

    let d = doap();
    let mut problems = Vec::new();
    let mut check = |what: String, spec: Option<Spec>| match spec {
        None => problems.push(format!(
            "{what}: not in the test's SPEC_OF/IDENTITY_SPEC map; add it there and to strait.doap"
        )),
        Some(Xep(n)) => match d.xeps.get(&n) {
            Some(s) if matches!(s.status.as_str(), "complete" | "partial") => {}
            Some(s) => problems.push(format!(
                "{what}: XEP-{n:04} is {:?} in strait.doap",
                s.status
            )),
            None => problems.push(format!("{what}: XEP-{n:04} is missing from strait.doap")),
        },
        Some(Rfc(n)) => {
            if !d.rfcs.contains(&n) {
                problems.push(format!("{what}: RFC {n} is missing from strait.doap"));
            }
        }
        Some(NotClaimed(_)) => {}
    };
    for (place, ns) in &seen {
        let spec = SPEC_OF.iter().find(|(n, _)| n == ns).map(|(_, s)| *s);
        check(format!("{ns:?} ({place})"), spec);
    }
    for (to, (category, type_)) in &identities {
        let spec = IDENTITY_SPEC
            .iter()
            .find(|((c, t), _)| c == category && t == type_)
            .map(|(_, s)| *s);
        check(format!("identity {category}/{type_} of {to}"), spec);
    }
    assert!(problems.is_empty(), "{problems:#?}");
    // The map itself must not drift from the DOAP either.
    for (ns, spec) in SPEC_OF {
        match spec {
            Xep(n) => assert!(
                d.xeps.contains_key(n),
                "{ns} maps to XEP-{n:04}, absent from strait.doap"
            ),
            Rfc(n) => assert!(
                d.rfcs.contains(n),
                "{ns} maps to RFC {n}, absent from strait.doap"
            ),
            NotClaimed(why) => assert!(!why.is_empty(), "{ns}: say why it is not claimed"),
        }
    }
}
