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
