//! Output formats shared by every command: a human table, JSON or YAML.

use serde::Serialize;

/// `-o` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// One JSON document.
    Json,
    /// One YAML document.
    Yaml,
}

impl Format {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Table => "table",
            Self::Json => "json",
            Self::Yaml => "yaml",
        }
    }
}

/// Print `value` as JSON or YAML; returns false for `Table` (the caller prints a table).
pub fn structured<T: Serialize>(format: Format, value: &T) -> bool {
    match format {
        Format::Table => false,
        Format::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
            true
        }
        Format::Yaml => {
            print!("{}", serde_yaml_ng::to_string(value).unwrap_or_default());
            true
        }
    }
}

/// [`structured`], with the numeric fields named in `keys` (Unix seconds, at any depth)
/// turned into RFC 3339 strings: the CLI's JSON and YAML have one shape for times.
pub fn structured_times<T: Serialize>(format: Format, value: &T, keys: &[&str]) -> bool {
    fn walk(v: &mut serde_json::Value, keys: &[&str]) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    match x.as_u64() {
                        Some(t) if keys.contains(&k.as_str()) => {
                            *x = openshell_runtime::api::record::rfc3339(t).into();
                        }
                        _ => walk(x, keys),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(|x| walk(x, keys)),
            _ => {}
        }
    }
    if format == Format::Table {
        return false;
    }
    let mut v = serde_json::to_value(value).unwrap_or_default();
    walk(&mut v, keys);
    structured(format, &v)
}

/// Print rows as aligned columns under a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = width[i]))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// Print `openshell: <e>` on stderr; the exit status of a failed command (1).
pub fn fail(e: impl std::fmt::Display) -> i32 {
    eprintln!("openshell: {e}");
    1
}
