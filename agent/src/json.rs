//! JSON values for frame headers: parsing and compact, ASCII-only serialization.
//!
//! Strings are bytes. The node's Python encodes a path that is not UTF-8 with
//! ``surrogateescape`` (each stray byte as a lone surrogate U+DC80..U+DCFF), so a lone
//! surrogate in that range decodes back to its byte, and a byte that is not part of valid
//! UTF-8 is written as that surrogate: a name round-trips whatever its bytes.

use std::fmt::Write;

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Vec<u8>),
    /// A string holding a lone surrogate that is not an escaped byte: text no name or
    /// argument can be, refused wherever a string is expected.
    Invalid,
    Arr(Vec<Value>),
    Obj(Vec<(Vec<u8>, Value)>),
}

/// Deepest nesting a header may have; deeper is out of protocol.
const MAX_DEPTH: usize = 64;

impl Value {
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Obj(items) => items.iter().find(|(k, _)| k == key.as_bytes()).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Python's truthiness, for the boolean flags requests carry.
    pub fn truthy(&self) -> bool {
        match self {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::Float(f) => *f != 0.0,
            Value::Str(s) => !s.is_empty(),
            Value::Invalid => true,
            Value::Arr(a) => !a.is_empty(),
            Value::Obj(o) => !o.is_empty(),
        }
    }

    pub fn str(s: &str) -> Value {
        Value::Str(s.as_bytes().to_vec())
    }
}

/// An object under construction, in insertion order.
#[derive(Default)]
pub struct Obj(pub Vec<(Vec<u8>, Value)>);

impl Obj {
    pub fn new() -> Obj {
        Obj(Vec::new())
    }

    pub fn set(mut self, key: &str, value: Value) -> Obj {
        self.put(key, value);
        self
    }

    pub fn put(&mut self, key: &str, value: Value) {
        if let Some(slot) = self.0.iter_mut().find(|(k, _)| k == key.as_bytes()) {
            slot.1 = value;
        } else {
            self.0.push((key.as_bytes().to_vec(), value));
        }
    }

    pub fn value(self) -> Value {
        Value::Obj(self.0)
    }
}

// -- parsing ---------------------------------------------------------------------------

pub fn parse(text: &[u8]) -> Result<Value, String> {
    // Raw text must be UTF-8; stray bytes of a name only come as \udcXX escapes.
    std::str::from_utf8(text).map_err(|e| e.to_string())?;
    let mut p = Parser { s: text, i: 0 };
    p.ws();
    let value = p.value(0)?;
    p.ws();
    if p.i != p.s.len() {
        return Err(format!("extra data at byte {}", p.i));
    }
    Ok(value)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn expect(&mut self, word: &[u8]) -> Result<(), String> {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(format!("unexpected text at byte {}", self.i))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err("nested too deeply".into());
        }
        match self.peek() {
            None => Err("unexpected end".into()),
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string().map(|s| s.map_or(Value::Invalid, Value::Str)),
            Some(b't') => self.expect(b"true").map(|_| Value::Bool(true)),
            Some(b'f') => self.expect(b"false").map(|_| Value::Bool(false)),
            Some(b'n') => self.expect(b"null").map(|_| Value::Null),
            Some(b'N') => self.expect(b"NaN").map(|_| Value::Float(f64::NAN)),
            Some(b'I') => self.expect(b"Infinity").map(|_| Value::Float(f64::INFINITY)),
            Some(c) if c == b'-' || c.is_ascii_digit() => self.number(),
            Some(_) => Err(format!("unexpected character at byte {}", self.i)),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, String> {
        self.i += 1;
        let mut items: Vec<(Vec<u8>, Value)> = Vec::new();
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(Value::Obj(items));
        }
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return Err(format!("expected a key at byte {}", self.i));
            }
            let key = self.string()?.ok_or("a key is not valid text")?;
            self.ws();
            self.expect(b":")?;
            self.ws();
            let value = self.value(depth + 1)?;
            // Like Python's json: the last of repeated keys wins.
            if let Some(slot) = items.iter_mut().find(|(k, _)| *k == key) {
                slot.1 = value;
            } else {
                items.push((key, value));
            }
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Value::Obj(items));
                }
                _ => return Err(format!("expected , or }} at byte {}", self.i)),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, String> {
        self.i += 1;
        let mut items = Vec::new();
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(Value::Arr(items));
        }
        loop {
            self.ws();
            items.push(self.value(depth + 1)?);
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(Value::Arr(items));
                }
                _ => return Err(format!("expected , or ] at byte {}", self.i)),
            }
        }
    }

    fn number(&mut self) -> Result<Value, String> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
            if self.s[self.i..].starts_with(b"Infinity") {
                self.i += 8;
                return Ok(Value::Float(f64::NEG_INFINITY));
            }
        }
        let mut float = false;
        while let Some(c) = self.peek() {
            match c {
                b'0'..=b'9' => {}
                b'.' | b'e' | b'E' | b'+' | b'-' => float = true,
                _ => break,
            }
            self.i += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).map_err(|e| e.to_string())?;
        if !float {
            if let Ok(i) = text.parse::<i64>() {
                return Ok(Value::Int(i));
            }
        }
        text.parse::<f64>().map(Value::Float).map_err(|_| format!("bad number at byte {start}"))
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let digits = self.s.get(self.i..self.i + 4).ok_or("truncated \\u escape")?;
        let text = std::str::from_utf8(digits).map_err(|_| "bad \\u escape")?;
        let code = u32::from_str_radix(text, 16).map_err(|_| "bad \\u escape")?;
        self.i += 4;
        Ok(code)
    }

    /// A string's bytes; None if it holds a lone surrogate other than an escaped byte.
    fn string(&mut self) -> Result<Option<Vec<u8>>, String> {
        self.i += 1;
        let mut out = Vec::new();
        let mut valid = true;
        loop {
            let c = self.peek().ok_or("unterminated string")?;
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let e = self.peek().ok_or("unterminated string")?;
                    self.i += 1;
                    match e {
                        b'"' => out.push(b'"'),
                        b'\\' => out.push(b'\\'),
                        b'/' => out.push(b'/'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => {
                            let code = self.hex4()?;
                            valid &= self.unicode(code, &mut out)?;
                        }
                        _ => return Err(format!("bad escape at byte {}", self.i)),
                    }
                }
                c if c < 0x20 => return Err(format!("control character in string at byte {}", self.i)),
                c => out.push(c),
            }
        }
        Ok(valid.then_some(out))
    }

    /// Append one \u escape (a pair if it is one); false for a lone surrogate.
    fn unicode(&mut self, code: u32, out: &mut Vec<u8>) -> Result<bool, String> {
        let ch = if (0xD800..0xDC00).contains(&code) {
            // A high surrogate: a pair if a low one follows.
            if self.s[self.i..].starts_with(b"\\u") {
                let save = self.i;
                self.i += 2;
                let low = self.hex4()?;
                if (0xDC00..0xE000).contains(&low) {
                    char::from_u32(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00))
                } else {
                    self.i = save;
                    None
                }
            } else {
                None
            }
        } else if (0xDC80..0xDD00).contains(&code) {
            out.push((code - 0xDC00) as u8); // surrogateescape: a stray byte
            return Ok(true);
        } else {
            char::from_u32(code)
        };
        let Some(ch) = ch else { return Ok(false) };
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
        Ok(true)
    }
}

// -- serialization ---------------------------------------------------------------------

pub fn to_string(value: &Value) -> String {
    let mut out = String::with_capacity(64);
    write(value, &mut out);
    out
}

fn write(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(f) => {
            if f.is_finite() {
                let _ = write!(out, "{f:?}");
            } else {
                out.push_str("null");
            }
        }
        Value::Str(s) => write_str(s, out),
        Value::Invalid => out.push_str("\"\\ufffd\""),
        Value::Arr(items) => {
            out.push('[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                write(item, out);
            }
            out.push(']');
        }
        Value::Obj(items) => {
            out.push('{');
            for (n, (key, item)) in items.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                write_str(key, out);
                out.push(':');
                write(item, out);
            }
            out.push('}');
        }
    }
}

/// A JSON string, ASCII only: non-ASCII characters as \u escapes (pairs above U+FFFF),
/// bytes that are not UTF-8 as lone surrogates U+DC80..U+DCFF.
pub fn write_str(bytes: &[u8], out: &mut String) {
    out.push('"');
    let mut rest = bytes;
    while !rest.is_empty() {
        let (valid, bad) = match std::str::from_utf8(rest) {
            Ok(text) => (text, 0),
            Err(err) => {
                let upto = err.valid_up_to();
                let text = std::str::from_utf8(&rest[..upto]).unwrap_or("");
                (text, err.error_len().unwrap_or(rest.len() - upto))
            }
        };
        for ch in valid.chars() {
            match ch {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        let after = valid.len();
        for byte in &rest[after..after + bad] {
            let _ = write!(out, "\\u{:04x}", 0xDC00 + u32::from(*byte));
        }
        rest = &rest[after + bad..];
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let text = br#"{"id":3,"op":"exec","argv":["a","\u00e9",""],"f":1.5,"t":true,"n":null}"#;
        let v = parse(text).unwrap();
        assert_eq!(v.get("id"), Some(&Value::Int(3)));
        assert_eq!(v.get("argv").unwrap(), &Value::Arr(vec![
            Value::str("a"), Value::str("é"), Value::str("")]));
        assert_eq!(to_string(&v), r#"{"id":3,"op":"exec","argv":["a","\u00e9",""],"f":1.5,"t":true,"n":null}"#);
    }

    #[test]
    fn stray_bytes_are_surrogates() {
        let v = parse(br#""a\udc80b""#).unwrap();
        assert_eq!(v, Value::Str(vec![b'a', 0x80, b'b']));
        assert_eq!(to_string(&v), r#""a\udc80b""#);
        assert_eq!(to_string(&Value::str("\u{1F600}")), r#""\ud83d\ude00""#);
        assert_eq!(parse(br#""\ud83d\ude00""#).unwrap(), Value::str("\u{1F600}"));
        assert_eq!(parse(br#""a\ud800""#).unwrap(), Value::Invalid);
        assert_eq!(parse(br#""\udc00""#).unwrap(), Value::Invalid);
    }

    #[test]
    fn refuses_bad_text() {
        for bad in [&b"{"[..], b"{\"a\":}", b"[1,]", b"\"\x01\"", b"{} x", b"tru"] {
            assert!(parse(bad).is_err(), "{:?}", bad);
        }
        let mut deep = vec![b'['; 100];
        deep.extend(vec![b']'; 100]);
        assert!(parse(&deep).is_err());
    }
}
