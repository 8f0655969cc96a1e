//! One JSON object per line, for `--json`. Hand-written: the shapes are small and fixed.

use std::fmt::Write;

use casataa_proto::message::{ChatMessage, Content, FileEntry, Presence};

/// Escapes `s` as a JSON string, quotes included.
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A chat message: `seq`, `from`, `to`, `text`, `sent_at`, and `file` for files.
pub fn message(m: &ChatMessage) -> String {
    let (text, file) = match &m.content {
        Content::Text(body) => (body.as_str().to_owned(), String::new()),
        Content::File(info) => {
            let sha: String = info.sha256.iter().map(|b| format!("{b:02x}")).collect();
            (
                format!("[file] {} ({} bytes)", info.name, info.size),
                format!(
                    ",\"file\":{{\"id\":{},\"name\":{},\"size\":{},\"sha256\":\"{sha}\"}}",
                    info.id,
                    string(&info.name),
                    info.size
                ),
            )
        }
    };
    format!(
        "{{\"seq\":{},\"from\":{},\"to\":{},\"text\":{},\"sent_at\":{},\"client_id\":{}{file}}}",
        m.seq,
        string(&m.from),
        string(&m.to.to_string()),
        string(&text),
        m.at,
        m.client_id
    )
}

/// A file one may download: `id`, `name`, `size`, `from`, `to`, `sha256`, `at`.
pub fn file_entry(entry: &FileEntry) -> String {
    let sha: String = entry.file.sha256.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{{\"id\":{},\"name\":{},\"size\":{},\"from\":{},\"to\":{},\"sha256\":\"{sha}\",\"at\":{}}}",
        entry.file.id,
        string(&entry.file.name),
        entry.file.size,
        string(&entry.owner),
        string(&entry.to.to_string()),
        entry.at
    )
}

/// An online user.
pub fn presence(p: &Presence) -> String {
    format!("{{\"user\":{},\"online\":{},\"client\":\"{:?}\"}}", string(&p.user), p.online, p.kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped() {
        assert_eq!(string("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
        assert_eq!(string("héllo"), "\"héllo\"");
    }
}
