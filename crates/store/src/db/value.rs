//! Values crossing the SQL boundary: SQLite's five storage classes, borrowed.

use rusqlite::types::ValueRef as SqliteRef;

/// A value as bound to a statement or read from a row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    Null,
    Integer(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

impl<'a> ValueRef<'a> {
    pub(crate) fn to_sqlite(self) -> SqliteRef<'a> {
        match self {
            ValueRef::Null => SqliteRef::Null,
            ValueRef::Integer(i) => SqliteRef::Integer(i),
            ValueRef::Real(f) => SqliteRef::Real(f),
            ValueRef::Text(s) => SqliteRef::Text(s.as_bytes()),
            ValueRef::Blob(b) => SqliteRef::Blob(b),
        }
    }

    pub(crate) fn from_sqlite(v: SqliteRef<'a>) -> ValueRef<'a> {
        match v {
            SqliteRef::Null => ValueRef::Null,
            SqliteRef::Integer(i) => ValueRef::Integer(i),
            SqliteRef::Real(f) => ValueRef::Real(f),
            // SQLite hands back whatever bytes were stored as text; invalid
            // UTF-8 reads as a blob, which a `String` column then refuses.
            SqliteRef::Text(t) => match std::str::from_utf8(t) {
                Ok(s) => ValueRef::Text(s),
                Err(_) => ValueRef::Blob(t),
            },
            SqliteRef::Blob(b) => ValueRef::Blob(b),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ValueRef::Null => "null",
            ValueRef::Integer(_) => "integer",
            ValueRef::Real(_) => "real",
            ValueRef::Text(_) => "text",
            ValueRef::Blob(_) => "blob",
        }
    }
}

/// A Rust value that binds to a statement parameter.
pub trait ToValue {
    fn to_value(&self) -> ValueRef<'_>;
}

macro_rules! int_to_value {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> ValueRef<'_> {
                ValueRef::Integer(*self as i64)
            }
        }
    )*};
}
int_to_value!(i64, i32, i16, i8, u32, u16, u8, usize, u64);

impl ToValue for bool {
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Integer(*self as i64)
    }
}

impl ToValue for f64 {
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Real(*self)
    }
}

impl ToValue for f32 {
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Real(*self as f64)
    }
}

impl ToValue for str {
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Text(self)
    }
}

impl ToValue for String {
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Text(self)
    }
}

impl ToValue for [u8] {
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Blob(self)
    }
}

impl ToValue for Vec<u8> {
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Blob(self)
    }
}

impl<const N: usize> ToValue for [u8; N] {
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Blob(self)
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> ValueRef<'_> {
        match self {
            Some(v) => v.to_value(),
            None => ValueRef::Null,
        }
    }
}

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> ValueRef<'_> {
        (**self).to_value()
    }
}

impl<T: ToValue + ?Sized> ToValue for Box<T> {
    fn to_value(&self) -> ValueRef<'_> {
        (**self).to_value()
    }
}

impl ToValue for std::borrow::Cow<'_, str> {
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Text(self)
    }
}

/// A Rust value read from a column.
pub trait FromValue: Sized {
    fn from_value(v: ValueRef<'_>) -> Result<Self, String>;
}

fn wrong(want: &str, got: ValueRef<'_>) -> String {
    format!("expected {want}, found {}", got.kind())
}

impl FromValue for i64 {
    fn from_value(v: ValueRef<'_>) -> Result<Self, String> {
        match v {
            ValueRef::Integer(i) => Ok(i),
            v => Err(wrong("an integer", v)),
        }
    }
}

macro_rules! int_from_value {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(v: ValueRef<'_>) -> Result<Self, String> {
                let i = i64::from_value(v)?;
                <$t>::try_from(i).map_err(|_| format!("{i} is out of range for {}", stringify!($t)))
            }
        }
    )*};
}
int_from_value!(i32, i16, u32, u16, u8, usize, u64);

impl FromValue for bool {
    fn from_value(v: ValueRef<'_>) -> Result<Self, String> {
        Ok(i64::from_value(v)? != 0)
    }
}

impl FromValue for f64 {
    fn from_value(v: ValueRef<'_>) -> Result<Self, String> {
        match v {
            ValueRef::Real(f) => Ok(f),
            ValueRef::Integer(i) => Ok(i as f64),
            v => Err(wrong("a number", v)),
        }
    }
}

impl FromValue for String {
    fn from_value(v: ValueRef<'_>) -> Result<Self, String> {
        match v {
            ValueRef::Text(s) => Ok(s.to_owned()),
            v => Err(wrong("text", v)),
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(v: ValueRef<'_>) -> Result<Self, String> {
        match v {
            ValueRef::Blob(b) => Ok(b.to_vec()),
            ValueRef::Text(s) => Ok(s.as_bytes().to_vec()),
            v => Err(wrong("a blob", v)),
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: ValueRef<'_>) -> Result<Self, String> {
        match v {
            ValueRef::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}
