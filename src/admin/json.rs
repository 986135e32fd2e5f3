//! A JSON writer for `--json` output: one object per line, every string escaped to plain
//! ASCII (bytes from outside never reach the terminal raw; invalid UTF-8 becomes U+FFFD).
#![forbid(unsafe_code)]

/// A JSON string literal for `bytes`, quotes included.
pub fn string(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('"');
    for c in String::from_utf8_lossy(bytes).chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
    out
}

/// An object built member by member.
#[derive(Default)]
pub struct Object {
    text: String,
}

impl Object {
    /// An empty object.
    pub fn new() -> Object {
        Object::default()
    }

    fn key(&mut self, key: &str) {
        self.text.push(if self.text.is_empty() { '{' } else { ',' });
        self.text.push_str(&string(key.as_bytes()));
        self.text.push(':');
    }

    /// A string member.
    pub fn string(mut self, key: &str, value: &[u8]) -> Object {
        self.key(key);
        self.text.push_str(&string(value));
        self
    }

    /// A number member.
    pub fn number(mut self, key: &str, value: u64) -> Object {
        self.key(key);
        self.text.push_str(&value.to_string());
        self
    }

    /// A number, or null.
    pub fn optional(mut self, key: &str, value: Option<u64>) -> Object {
        self.key(key);
        self.text.push_str(&value.map_or("null".to_string(), |v| v.to_string()));
        self
    }

    /// A string, or null.
    pub fn optional_string(mut self, key: &str, value: Option<&[u8]>) -> Object {
        self.key(key);
        self.text.push_str(&value.map_or("null".to_string(), string));
        self
    }

    /// A boolean member.
    pub fn boolean(mut self, key: &str, value: bool) -> Object {
        self.key(key);
        self.text.push_str(if value { "true" } else { "false" });
        self
    }

    /// A boolean, or null.
    pub fn optional_boolean(mut self, key: &str, value: Option<bool>) -> Object {
        self.key(key);
        self.text.push_str(match value {
            Some(true) => "true",
            Some(false) => "false",
            None => "null",
        });
        self
    }

    /// An array of objects.
    pub fn objects(mut self, key: &str, values: Vec<Object>) -> Object {
        self.key(key);
        let items: Vec<String> = values.into_iter().map(Object::finish).collect();
        self.text.push('[');
        self.text.push_str(&items.join(","));
        self.text.push(']');
        self
    }

    /// An object member.
    pub fn object(mut self, key: &str, value: Object) -> Object {
        self.key(key);
        self.text.push_str(&value.finish());
        self
    }

    /// The object's text, on one line.
    pub fn finish(mut self) -> String {
        if self.text.is_empty() {
            return "{}".to_string();
        }
        self.text.push('}');
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_ascii() {
        assert_eq!(string(b"a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(string(b"x\ny\x1b[2J"), r#""x\u000ay\u001b[2J""#);
        assert_eq!(string("é😀".as_bytes()), r#""\u00e9\ud83d\ude00""#);
        assert_eq!(string(b"\xff"), r#""\ufffd""#);
    }

    #[test]
    fn objects() {
        let o = Object::new()
            .string("id", b"42")
            .number("size", 7)
            .optional("next", None)
            .boolean("held", false)
            .objects("list", vec![Object::new().number("a", 1), Object::new()]);
        assert_eq!(o.finish(), r#"{"id":"42","size":7,"next":null,"held":false,"list":[{"a":1},{}]}"#);
        assert_eq!(Object::new().finish(), "{}");
    }
}
