//! Open Graph data out of an HTML page, as Synapse's `preview_html.py`
//! finds it: the `og:*` `<meta>` tags, else `<title>` for `og:title` and
//! `<meta name="description">` for `og:description`.
//!
//! Only `<meta>` and `<title>` matter, so instead of an HTML parser (none is
//! in the dependency tree) the page is scanned with two regular
//! expressions, after comments, scripts and styles are cut out: attributes
//! in any order, quoted with `"` or `'` or unquoted, names in any case, and
//! character references (`&amp;`, `&#39;`, `&#x27;`) decoded.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use regex::Regex;

/// Synapse's `OG_TAG_NAME_MAXLEN` and `OG_TAG_VALUE_MAXLEN`: longer tags are dropped.
const TAG_NAME_MAX: usize = 50;
const TAG_VALUE_MAX: usize = 1000;
/// Og tags kept from one page (a page could have thousands).
const MAX_TAGS: usize = 50;

fn regex(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pattern).expect("a valid built-in pattern"))
}

/// Comments, scripts and styles: text in them is not markup.
fn not_markup() -> &'static Regex {
    static CELL: OnceLock<Regex> = OnceLock::new();
    regex(
        &CELL,
        r"(?is)<!--.*?-->|<script\b.*?</script\s*>|<style\b.*?</style\s*>",
    )
}

/// A `<meta ...>` tag and its attributes (`>` inside quotes does not end it).
fn meta_tag() -> &'static Regex {
    static CELL: OnceLock<Regex> = OnceLock::new();
    regex(
        &CELL,
        r#"(?i)<meta((?:\s+[^\s=/>"']+(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s"'>]+))?)*)\s*/?>"#,
    )
}

/// One attribute: name, and its value double-, single- or un-quoted.
fn attribute() -> &'static Regex {
    static CELL: OnceLock<Regex> = OnceLock::new();
    regex(
        &CELL,
        r#"([^\s=/>"']+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+)))?"#,
    )
}

fn title_tag() -> &'static Regex {
    static CELL: OnceLock<Regex> = OnceLock::new();
    regex(&CELL, r"(?is)<title\b[^>]*>(.*?)</title\s*>")
}

/// The attributes of a tag, names lowercased, values decoded; the first of
/// a repeated name wins, as in a browser.
fn attributes(text: &str) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    for capture in attribute().captures_iter(text) {
        let name = capture[1].to_ascii_lowercase();
        let value = capture
            .get(2)
            .or_else(|| capture.get(3))
            .or_else(|| capture.get(4))
            .map(|m| decode_entities(m.as_str()))
            .unwrap_or_default();
        found.entry(name).or_insert(value);
    }
    found
}

/// The Open Graph tags of `html`, with Synapse's fallbacks for the title
/// and the description. Values are strings, whitespace collapsed.
pub fn open_graph(html: &str) -> BTreeMap<String, String> {
    let html = not_markup().replace_all(html, " ");
    let mut og = BTreeMap::new();
    let mut description = None;
    for tag in meta_tag().captures_iter(&html) {
        let attributes = attributes(&tag[1]);
        let Some(content) = attributes.get("content") else {
            continue;
        };
        // Many sites write `name="og:..."`; Synapse reads both.
        let key = attributes
            .get("property")
            .or_else(|| attributes.get("name"))
            .map(|key| key.trim().to_owned());
        let Some(key) = key else { continue };
        if key.len() > 3 && key[..3].eq_ignore_ascii_case("og:") {
            if og.len() < MAX_TAGS {
                og.entry(key).or_insert_with(|| collapse(content));
            }
        } else if key.eq_ignore_ascii_case("description") && description.is_none() {
            description = Some(collapse(content));
        }
    }
    if !og.contains_key("og:title") {
        if let Some(title) = title_tag().captures(&html) {
            let title = collapse(&decode_entities(&title[1]));
            if !title.is_empty() {
                og.insert("og:title".to_owned(), title);
            }
        }
    }
    if !og.contains_key("og:description") {
        if let Some(description) = description.filter(|d| !d.is_empty()) {
            og.insert("og:description".to_owned(), description);
        }
    }
    og.retain(|key, value| key.len() <= TAG_NAME_MAX && value.len() <= TAG_VALUE_MAX);
    og
}

/// The charset a page names in `<meta charset>` or `<meta http-equiv>`.
pub fn declared_charset(html_start: &str) -> Option<String> {
    for tag in meta_tag().captures_iter(html_start) {
        let attributes = attributes(&tag[1]);
        if let Some(charset) = attributes.get("charset") {
            return Some(charset.trim().to_ascii_lowercase());
        }
        let is_content_type = attributes
            .get("http-equiv")
            .is_some_and(|v| v.eq_ignore_ascii_case("content-type"));
        if is_content_type {
            if let Some(charset) = attributes.get("content").and_then(|c| charset_of(c)) {
                return Some(charset);
            }
        }
    }
    None
}

/// The `charset` parameter of a `Content-Type` value.
pub fn charset_of(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|parameter| {
        let (name, value) = parameter.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| value.trim().trim_matches('"').to_ascii_lowercase())
    })
}

/// The page's text: UTF-8 unless the header or the page says Latin-1 /
/// Windows-1252 (the two other encodings of most of the web), whose bytes
/// are taken as the code points they are (close enough for a preview).
pub fn decode_body(body: &[u8], content_type: &str) -> String {
    let head = String::from_utf8_lossy(&body[..body.len().min(4096)]);
    let charset = charset_of(content_type).or_else(|| declared_charset(&head));
    match charset.as_deref() {
        Some("iso-8859-1" | "latin1" | "latin-1" | "windows-1252" | "cp1252" | "us-ascii") => {
            body.iter().map(|&byte| char::from(byte)).collect()
        }
        _ => String::from_utf8_lossy(body).into_owned(),
    }
}

fn collapse(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Decodes character references: the named ones pages use in titles and
/// descriptions, and every numeric one. Unknown names stay as written.
pub fn decode_entities(text: &str) -> String {
    if !text.contains('&') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('&') {
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let end = rest[1..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '#'))
            .map(|i| i + 1)
            .unwrap_or(rest.len());
        let name = &rest[1..end];
        match entity(name) {
            Some(decoded) => {
                out.push(decoded);
                rest = &rest[end..];
                if rest.starts_with(';') {
                    rest = &rest[1..];
                }
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn entity(name: &str) -> Option<char> {
    if let Some(number) = name.strip_prefix('#') {
        let code = match number.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => number.parse().ok()?,
        };
        return Some(char::from_u32(code).unwrap_or('\u{FFFD}'));
    }
    Some(match name {
        "amp" | "AMP" => '&',
        "lt" | "LT" => '<',
        "gt" | "GT" => '>',
        "quot" | "QUOT" => '"',
        "apos" => '\'',
        "nbsp" => '\u{A0}',
        "copy" => '©',
        "reg" => '®',
        "trade" => '™',
        "hellip" => '…',
        "mdash" => '—',
        "ndash" => '–',
        "lsquo" => '‘',
        "rsquo" => '’',
        "ldquo" => '“',
        "rdquo" => '”',
        "laquo" => '«',
        "raquo" => '»',
        "middot" => '·',
        "bull" => '•',
        "euro" => '€',
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn og_tags_in_any_attribute_order_and_quoting() {
        let html = r#"<html><head>
            <META content="A &amp; B" property="og:title">
            <meta property='og:description' content='It&#39;s "quoted" &gt; here'/>
            <meta content=https://example.org/cat.png property=og:image>
            <meta property="og:title" content="second title, ignored">
            <title>Not this</title>
            </head></html>"#;
        let og = open_graph(html);
        assert_eq!(og["og:title"], "A & B");
        assert_eq!(og["og:description"], "It's \"quoted\" > here");
        assert_eq!(og["og:image"], "https://example.org/cat.png");
    }

    #[test]
    fn title_and_meta_description_are_the_fallbacks() {
        let html = "<head><title>\n  Caf&eacute; &#x263A;\n  page </title>\
            <meta name=\"Description\" content=\"About  the\ncafé\"></head>";
        let og = open_graph(html);
        assert_eq!(og["og:title"], "Caf&eacute; \u{263A} page");
        assert_eq!(og["og:description"], "About the café");
        assert!(!og.contains_key("og:image"));
    }

    #[test]
    fn comments_and_scripts_are_not_markup() {
        let html = r#"<!-- <meta property="og:title" content="commented"> -->
            <script>var s = '<meta property="og:title" content="scripted">';</script>
            <meta property="og:title" content="real" data-x="a > b">"#;
        assert_eq!(open_graph(html)["og:title"], "real");
    }

    #[test]
    fn overlong_values_are_dropped() {
        let long = "x".repeat(TAG_VALUE_MAX + 1);
        let html = format!(r#"<meta property="og:title" content="{long}"><title>t</title>"#);
        assert!(!open_graph(&html).contains_key("og:title"));
    }

    #[test]
    fn charsets_from_the_header_or_the_page() {
        let latin1 = b"<meta charset=iso-8859-1><title>caf\xe9</title>";
        assert_eq!(
            open_graph(&decode_body(latin1, "text/html"))["og:title"],
            "café"
        );
        let utf8 = "<title>café</title>".as_bytes();
        assert_eq!(
            open_graph(&decode_body(utf8, "text/html; charset=UTF-8"))["og:title"],
            "café"
        );
        assert_eq!(decode_entities("a &unknown; b &amp c"), "a &unknown; b & c");
    }
}
