//! `openshell doctor`: what the host offers sandboxes and how to fix what is missing.

use openshell_runtime::api::host::{Level, probe};

use crate::output::{Format, structured, table};

#[derive(serde::Serialize)]
struct Row {
    check: String,
    status: String,
    detail: String,
    fix: String,
}

/// Print the checks; exit 1 when a required feature is missing.
pub fn run(format: Format) -> i32 {
    let checks = probe();
    let rows: Vec<Row> = checks
        .iter()
        .map(|c| Row {
            check: c.name.to_string(),
            status: match c.level {
                Level::Ok => "ok",
                Level::Warn => "warn",
                Level::Fail => "FAIL",
            }
            .to_string(),
            detail: c.detail.clone(),
            fix: c.fix.clone(),
        })
        .collect();
    let failed = checks.iter().any(|c| c.level == Level::Fail);
    if !structured(format, &rows) {
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| vec![r.check.clone(), r.status.clone(), r.detail.clone()])
            .collect();
        table(&["CHECK", "STATUS", "DETAIL"], &cells);
        for r in rows.iter().filter(|r| !r.fix.is_empty()) {
            println!("fix {}: {}", r.check, r.fix);
        }
    }
    i32::from(failed)
}
