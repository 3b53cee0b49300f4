//! Lossless storage of any text and any JSON: [`StoredText`] and [`StoredJson`], the value types
//! of every column a user's or a provider's text can reach.
//!
//! Postgres refuses the NUL character (U+0000) in `text` and the `\u0000` escape in `jsonb`; SQLite
//! keeps NUL but its string functions stop at it. Yet NUL is valid in JSON and in every OpenAI SDK,
//! so a prompt, an answer or a metadata value may hold it. Both types apply one reversible escape,
//! on both backends, in the one place every write and read of such a column goes through (their
//! sea-orm value conversions):
//!
//! - U+FDD0 (a Unicode noncharacter, reserved for exactly this kind of internal use) is the escape
//!   character. NUL is stored as U+FDD0 U+FDD1 and U+FDD0 itself as U+FDD0 U+FDD0; every other
//!   character is stored as it is. Text without NUL or U+FDD0 — all real-world text — is stored
//!   unchanged, so SQL over these columns (`LIKE`, full-text search, `jsonb` operators) keeps
//!   working on ordinary text, and a search for ordinary text never matches inside an escape.
//! - JSON is escaped string by string and key by key, so a `jsonb` column stays `jsonb` with its
//!   operators and indexes; numbers, booleans and nulls are untouched.
//! - Reading undoes it. A U+FDD0 followed by anything else is read as it is, so rows written before
//!   the escape existed (SQLite kept raw NULs) read back unchanged: no migration was needed.
//!
//! The escape is injective and keeps prefixes, so equality, `IN`, grouping and prefix matches give
//! the same answers on stored values as on the originals — provided the operand is escaped the same
//! way: **filter a [`StoredText`] column with a [`StoredText`] operand** (`Column::X.eq(
//! StoredText::from(s))`, `find_by_id(s)` does it for key columns), and build `jsonb` operands with
//! [`escape_json`]. Considered and not chosen: `bytea` or `json` columns, which would keep NUL but
//! give up text search and `jsonb` queries, and need a rewrite of every populated table.

use std::borrow::Cow;

use sea_orm::sea_query::{ArrayType, ColumnType, Nullable, ValueType, ValueTypeErr};
use sea_orm::{ActiveValue, Value};
use sea_orm::{ColIdx, DbErr, IntoActiveValue, QueryResult, TryFromU64, TryGetError, TryGetable};

/// The escape character: a noncharacter, which no real-world text holds.
pub const ESCAPE: char = '\u{FDD0}';
/// What follows [`ESCAPE`] to stand for NUL.
const NUL_MARK: char = '\u{FDD1}';

/// `s` as stored: NUL and [`ESCAPE`] escaped, everything else as it is (borrowed when unchanged).
pub fn escape_text(s: &str) -> Cow<'_, str> {
    if !s.contains(['\0', ESCAPE]) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\0' => out.extend([ESCAPE, NUL_MARK]),
            ESCAPE => out.extend([ESCAPE, ESCAPE]),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The text a stored `s` stands for: [`escape_text`] undone.
pub fn unescape_text(s: &str) -> Cow<'_, str> {
    if !s.contains(ESCAPE) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != ESCAPE {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(NUL_MARK) => out.push('\0'),
            Some(ESCAPE) => out.push(ESCAPE),
            // Not an escape of ours: kept as it was.
            Some(other) => out.extend([ESCAPE, other]),
            None => out.push(ESCAPE),
        }
    }
    Cow::Owned(out)
}

/// Escapes every string and key of `value`, in place.
pub fn escape_json(value: &mut serde_json::Value) {
    map_strings(value, escape_text);
}

/// Undoes [`escape_json`], in place.
pub fn unescape_json(value: &mut serde_json::Value) {
    map_strings(value, unescape_text);
}

fn map_strings(value: &mut serde_json::Value, f: fn(&str) -> Cow<'_, str>) {
    match value {
        serde_json::Value::String(s) => replace(s, f),
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| map_strings(v, f)),
        serde_json::Value::Object(map) => {
            if map.keys().any(|k| matches!(f(k), Cow::Owned(_))) {
                *map = std::mem::take(map)
                    .into_iter()
                    .map(|(k, v)| (f(&k).into_owned(), v))
                    .collect();
            }
            map.values_mut().for_each(|v| map_strings(v, f));
        }
        serde_json::Value::Null | serde_json::Value::Bool(_) | serde_json::Value::Number(_) => {}
    }
}

fn replace(s: &mut String, f: fn(&str) -> Cow<'_, str>) {
    if let Cow::Owned(changed) = f(s) {
        *s = changed;
    }
}

/// Text of a `text` column, escaped on its way in and unescaped on its way out.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StoredText(String);

impl StoredText {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::ops::Deref for StoredText {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for StoredText {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for StoredText {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl From<&String> for StoredText {
    fn from(s: &String) -> Self {
        Self(s.clone())
    }
}

impl From<StoredText> for String {
    fn from(text: StoredText) -> Self {
        text.0
    }
}

impl From<StoredText> for Value {
    fn from(text: StoredText) -> Self {
        let mut s = text.0;
        replace(&mut s, escape_text);
        Value::String(Some(s))
    }
}

impl TryGetable for StoredText {
    fn try_get_by<I: ColIdx>(res: &QueryResult, index: I) -> Result<Self, TryGetError> {
        let mut s = String::try_get_by(res, index)?;
        replace(&mut s, unescape_text);
        Ok(Self(s))
    }
}

impl ValueType for StoredText {
    fn try_from(v: Value) -> Result<Self, ValueTypeErr> {
        let mut s = <String as ValueType>::try_from(v)?;
        replace(&mut s, unescape_text);
        Ok(Self(s))
    }

    fn type_name() -> String {
        "StoredText".into()
    }

    fn array_type() -> ArrayType {
        ArrayType::String
    }

    fn column_type() -> ColumnType {
        ColumnType::Text
    }
}

impl Nullable for StoredText {
    fn null() -> Value {
        Value::String(None)
    }
}

impl IntoActiveValue<StoredText> for StoredText {
    fn into_active_value(self) -> ActiveValue<StoredText> {
        ActiveValue::Set(self)
    }
}

/// Text keys are never made from numbers.
impl TryFromU64 for StoredText {
    fn try_from_u64(_: u64) -> Result<Self, DbErr> {
        Err(DbErr::ConvertFromU64("StoredText"))
    }
}

/// JSON of a `jsonb` column (JSON text on SQLite), escaped on its way in and unescaped on its way
/// out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoredJson(serde_json::Value);

impl StoredJson {
    pub fn as_value(&self) -> &serde_json::Value {
        &self.0
    }

    pub fn into_value(self) -> serde_json::Value {
        self.0
    }
}

impl From<serde_json::Value> for StoredJson {
    fn from(value: serde_json::Value) -> Self {
        Self(value)
    }
}

impl From<StoredJson> for serde_json::Value {
    fn from(json: StoredJson) -> Self {
        json.0
    }
}

impl From<StoredJson> for Value {
    fn from(json: StoredJson) -> Self {
        let mut value = json.0;
        escape_json(&mut value);
        Value::Json(Some(Box::new(value)))
    }
}

impl TryGetable for StoredJson {
    fn try_get_by<I: ColIdx>(res: &QueryResult, index: I) -> Result<Self, TryGetError> {
        let mut value = serde_json::Value::try_get_by(res, index)?;
        unescape_json(&mut value);
        Ok(Self(value))
    }
}

impl ValueType for StoredJson {
    fn try_from(v: Value) -> Result<Self, ValueTypeErr> {
        let mut value = <serde_json::Value as ValueType>::try_from(v)?;
        unescape_json(&mut value);
        Ok(Self(value))
    }

    fn type_name() -> String {
        "StoredJson".into()
    }

    fn array_type() -> ArrayType {
        ArrayType::Json
    }

    fn column_type() -> ColumnType {
        ColumnType::JsonBinary
    }
}

impl Nullable for StoredJson {
    fn null() -> Value {
        Value::Json(None)
    }
}

impl IntoActiveValue<StoredJson> for StoredJson {
    fn into_active_value(self) -> ActiveValue<StoredJson> {
        ActiveValue::Set(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ADVERSARIAL: [&str; 12] = [
        "",
        "plain text",
        "\0",
        "nul here: \0 end",
        "\0\0\0",
        "\u{FDD0}",
        "\u{FDD1}",
        "\u{FDD0}\u{FDD1}",
        "\u{FDD0}\u{FDD0}\0\u{FDD1}\0",
        "ends in escape \u{FDD0}",
        "emoji 🎉 rtl שלום עולם مرحبا \u{202E}reversed",
        "\u{FFFF}\u{FFFE}\u{10FFFF}\u{1}\u{7F}",
    ];

    #[test]
    fn text_round_trips_and_ordinary_text_is_unchanged() {
        for s in ADVERSARIAL {
            let stored = escape_text(s);
            assert!(!stored.contains('\0'), "{s:?} stored as {stored:?}");
            assert_eq!(unescape_text(&stored), s, "{s:?}");
        }
        for s in ["plain text", "emoji 🎉 rtl שלום", "\u{FDD1} alone", ""] {
            assert!(matches!(escape_text(s), Cow::Borrowed(_)), "{s:?}");
        }
        assert_eq!(escape_text("a\0b"), "a\u{FDD0}\u{FDD1}b");
        assert_eq!(escape_text("a\u{FDD0}b"), "a\u{FDD0}\u{FDD0}b");
    }

    #[test]
    fn distinct_texts_stay_distinct_and_prefixes_stay_prefixes() {
        let escaped: Vec<String> = ADVERSARIAL
            .iter()
            .map(|s| escape_text(s).into_owned())
            .collect();
        for (i, a) in escaped.iter().enumerate() {
            for (j, b) in escaped.iter().enumerate() {
                assert_eq!(i == j, a == b, "{:?} {:?}", ADVERSARIAL[i], ADVERSARIAL[j]);
                let prefix = ADVERSARIAL[j].starts_with(ADVERSARIAL[i]);
                assert_eq!(prefix, b.starts_with(a.as_str()), "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn unknown_escapes_read_as_they_are() {
        for s in ["\u{FDD0}x", "\u{FDD0}", "raw \0 from an older row"] {
            assert_eq!(unescape_text(s), s);
        }
    }

    #[test]
    fn json_strings_and_keys_round_trip() {
        let original = json!({
            "nul\0key": ["a\0b", {"\u{FDD0}": "\u{FDD0}\u{FDD1}"}, 1, 2.5, true, null],
            "plain": "text",
        });
        let mut stored = original.clone();
        escape_json(&mut stored);
        let text = stored.to_string();
        assert!(!text.contains("\\u0000"), "{text}");
        assert_eq!(
            stored["plain"],
            json!("text"),
            "ordinary values are unchanged"
        );
        unescape_json(&mut stored);
        assert_eq!(stored, original);
    }
}
