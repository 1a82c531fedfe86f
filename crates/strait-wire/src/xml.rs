//! Namespace resolution over the tokenizer's raw tokens, and the canonical writer.
//!
//! We resolve namespaces ourselves (rather than using `rxml::Parser`) so the
//! stream header's default namespace is visible, attribute counts can be
//! budgeted before resolution, and the reserved `xml`/`xmlns` bindings are
//! checked strictly.

use rxml::{XMLNS_XML, XMLNS_XMLNS};

use crate::token::Token;

use crate::error::{StreamError, StreamErrorCondition as C};
use crate::stanza::push_escaped;

/// A resolved attribute: namespace ("" if none), local name, value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Attr {
    pub ns: String,
    pub name: String,
    pub value: String,
}

/// A namespace-resolved XML event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum XmlEvent {
    Declaration,
    Start {
        ns: String,
        name: String,
        attrs: Vec<Attr>,
    },
    End,
    Text(String),
}

#[derive(Debug, Default)]
struct Scope {
    default: Option<String>,
    prefixes: Vec<(String, String)>,
}

#[derive(Debug)]
struct Pending {
    prefix: Option<String>,
    name: String,
    scope: Scope,
    attrs: Vec<(Option<String>, String, String)>,
    count: usize,
}

/// Namespaces in XML 1.0 on top of [`Token`]s.
#[derive(Debug, Default)]
pub(crate) struct Resolver {
    scopes: Vec<Scope>,
    pending: Option<Pending>,
    pub max_attributes: usize,
}

fn nwf(text: &str) -> StreamError {
    StreamError::with_text(C::NotWellFormed, text)
}

impl Resolver {
    pub fn new(max_attributes: usize) -> Self {
        Resolver {
            max_attributes,
            ..Default::default()
        }
    }

    /// The default namespace in scope for the innermost open element.
    pub fn default_ns(&self) -> &str {
        self.scopes
            .iter()
            .rev()
            .find_map(|s| s.default.as_deref())
            .unwrap_or("")
    }

    fn lookup(&self, pending: &Scope, prefix: &str) -> Result<String, StreamError> {
        if prefix == "xml" {
            return Ok(XMLNS_XML.to_string());
        }
        let found = pending
            .prefixes
            .iter()
            .rev()
            .chain(
                self.scopes
                    .iter()
                    .rev()
                    .flat_map(|s| s.prefixes.iter().rev()),
            )
            .find(|(p, _)| p == prefix);
        match found {
            Some((_, uri)) => Ok(uri.clone()),
            None => Err(StreamError::with_text(
                C::BadNamespacePrefix,
                format!("undeclared namespace prefix '{prefix}'"),
            )),
        }
    }

    pub fn feed(&mut self, ev: Token) -> Result<Option<XmlEvent>, StreamError> {
        match ev {
            Token::XmlDeclaration => Ok(Some(XmlEvent::Declaration)),
            Token::HeadOpen {
                prefix,
                local: name,
            } => {
                self.pending = Some(Pending {
                    prefix,
                    name,
                    scope: Scope::default(),
                    attrs: Vec::new(),
                    count: 0,
                });
                Ok(None)
            }
            Token::Attribute {
                prefix,
                local: name,
                value,
            } => {
                let max = self.max_attributes;
                let p = self
                    .pending
                    .as_mut()
                    .ok_or_else(|| nwf("stray attribute"))?;
                p.count += 1;
                if p.count > max {
                    return Err(StreamError::with_text(
                        C::PolicyViolation,
                        format!("too many attributes on <{}> (limit {max})", p.name),
                    ));
                }
                declare(p, prefix, name, value)?;
                Ok(None)
            }
            Token::HeadClose => {
                let p = self
                    .pending
                    .take()
                    .ok_or_else(|| nwf("stray element head"))?;
                let ns = match &p.prefix {
                    None => p
                        .scope
                        .default
                        .clone()
                        .unwrap_or_else(|| self.default_ns().to_string()),
                    Some(x) if x == "xmlns" => return Err(nwf("element with xmlns prefix")),
                    Some(x) => self.lookup(&p.scope, x)?,
                };
                let mut attrs: Vec<Attr> = Vec::with_capacity(p.attrs.len());
                for (prefix, name, value) in p.attrs {
                    let ans = match prefix {
                        None => String::new(),
                        Some(x) => self.lookup(&p.scope, &x)?,
                    };
                    if attrs.iter().any(|a| a.name == name && a.ns == ans) {
                        return Err(nwf("duplicate attribute"));
                    }
                    attrs.push(Attr {
                        ns: ans,
                        name,
                        value,
                    });
                }
                self.scopes.push(p.scope);
                Ok(Some(XmlEvent::Start {
                    ns,
                    name: p.name,
                    attrs,
                }))
            }
            Token::Foot => {
                self.scopes.pop();
                Ok(Some(XmlEvent::End))
            }
            Token::Text(text) => Ok(Some(XmlEvent::Text(text))),
        }
    }
}

/// Records one raw attribute of a pending element: a namespace declaration
/// (checked against the reserved bindings) or an ordinary attribute.
fn declare(
    p: &mut Pending,
    prefix: Option<String>,
    name: String,
    value: String,
) -> Result<(), StreamError> {
    // Only namespace declarations are compared with the reserved names: this runs for every
    // attribute of every element.
    let reserved_uri = |value: &str| value == XMLNS_XMLNS || value == XMLNS_XML;
    match prefix.as_deref() {
        None if name == "xmlns" => {
            if reserved_uri(&value) {
                return Err(nwf("reserved namespace as default namespace"));
            }
            if p.scope.default.is_some() {
                return Err(nwf("duplicate attribute"));
            }
            p.scope.default = Some(value);
        }
        Some("xmlns") => {
            if name == "xmlns" || (name == "xml") != (value == XMLNS_XML) || value == XMLNS_XMLNS {
                return Err(nwf("reserved namespace prefix or name"));
            }
            if value.is_empty() {
                return Err(nwf("empty namespace name for a prefix"));
            }
            if p.scope.prefixes.iter().any(|(x, _)| *x == name) {
                return Err(nwf("duplicate attribute"));
            }
            if !reserved_uri(&value) {
                p.scope.prefixes.push((name, value));
            }
        }
        // Duplicates are found once the element's head is complete, after prefixes are
        // resolved: two attributes with the same prefix and name resolve to the same pair.
        _ => p.attrs.push((prefix, name, value)),
    }
    Ok(())
}

/// Writes elements canonically: single-quoted attributes in input order,
/// canonical escaping, unprefixed element names with `xmlns` wherever the
/// namespace differs from the parent's (always on depth-0 elements, so each
/// one is self-contained), and generated prefixes `a0`, `a1`, ... declared
/// on each element for its namespaced attributes.
#[derive(Debug)]
pub(crate) struct CanonicalWriter {
    pub out: String,
    /// The open elements' names, end to end (each one's length is in `open`), and their
    /// namespaces, each written once where it differs from the parent's: two buffers per
    /// writer rather than two strings per element (this runs for every element parsed).
    names: String,
    nss: String,
    open: Vec<Open>,
    open_tag: bool,
}

/// An open element of a [`CanonicalWriter`].
#[derive(Debug)]
struct Open {
    name_len: usize,
    /// Its namespace in `nss`.
    ns: std::ops::Range<usize>,
    /// Whether it added its namespace to `nss` (it differs from the parent's).
    own_ns: bool,
}

impl CanonicalWriter {
    pub fn new(out: String) -> Self {
        CanonicalWriter {
            out,
            names: String::new(),
            nss: String::new(),
            open: Vec::new(),
            open_tag: false,
        }
    }

    pub fn depth(&self) -> usize {
        self.open.len()
    }

    fn close_open_tag(&mut self) {
        if self.open_tag {
            self.out.push('>');
            self.open_tag = false;
        }
    }

    pub fn start<'a>(
        &mut self,
        ns: &str,
        name: &str,
        attrs: impl Iterator<Item = (&'a str, &'a str, &'a str)> + Clone,
    ) {
        self.close_open_tag();
        self.out.push('<');
        self.out.push_str(name);
        let inherited = self
            .open
            .last()
            .filter(|parent| &self.nss[parent.ns.clone()] == ns)
            .map(|parent| parent.ns.clone());
        if inherited.is_none() {
            push_attr(&mut self.out, "xmlns", ns);
        }
        write_attrs(&mut self.out, attrs);
        let own_ns = inherited.is_none();
        let ns = inherited.unwrap_or_else(|| {
            let start = self.nss.len();
            self.nss.push_str(ns);
            start..self.nss.len()
        });
        self.names.push_str(name);
        self.open.push(Open {
            name_len: name.len(),
            ns,
            own_ns,
        });
        self.open_tag = true;
    }

    pub fn text(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        self.close_open_tag();
        push_escaped(&mut self.out, text, false);
    }

    pub fn end(&mut self) {
        let Some(open) = self.open.pop() else {
            return;
        };
        let name_start = self.names.len() - open.name_len;
        if self.open_tag {
            self.out.push_str("/>");
            self.open_tag = false;
        } else {
            self.out.push_str("</");
            self.out.push_str(&self.names[name_start..]);
            self.out.push('>');
        }
        self.names.truncate(name_start);
        if open.own_ns {
            self.nss.truncate(open.ns.start);
        }
    }
}

/// ` name='value'` with canonical escaping.
pub(crate) fn push_attr(out: &mut String, name: &str, value: &str) {
    out.push(' ');
    out.push_str(name);
    out.push_str("='");
    push_escaped(out, value, true);
    out.push('\'');
}

/// Writes attributes given as (ns, local name, value): `xml:` for the XML
/// namespace, generated prefixes for other namespaces.
pub(crate) fn write_attrs<'a>(
    out: &mut String,
    attrs: impl Iterator<Item = (&'a str, &'a str, &'a str)> + Clone,
) {
    let mut prefixes: Vec<&str> = Vec::new();
    for (ns, _, _) in attrs.clone() {
        if !ns.is_empty() && ns != XMLNS_XML && !prefixes.contains(&ns) {
            push_attr(out, &format!("xmlns:a{}", prefixes.len()), ns);
            prefixes.push(ns);
        }
    }
    for (ns, name, value) in attrs {
        if ns.is_empty() {
            push_attr(out, name, value);
        } else if ns == XMLNS_XML {
            push_attr(out, &format!("xml:{name}"), value);
        } else {
            let i = prefixes.iter().position(|p| *p == ns).unwrap_or(0);
            push_attr(out, &format!("a{i}:{name}"), value);
        }
    }
}
