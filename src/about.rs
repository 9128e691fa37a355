//! `--about`: name, version, capabilities and every setting, as Singer SDK-shaped JSON (which
//! Meltano reads) or as the Markdown settings table docs/configuration.md shows. Needs no config and never
//! prints a secret: settings are described, not read.

use std::io::Write;

use serde_json::{Map, Value, json};

use crate::cli::AboutFormat;
use crate::config::SETTINGS;
use crate::error::{ErrorKind, Result, ResultExt};

/// What the tap can do, in Meltano's capability words.
pub const CAPABILITIES: &[&str] = &["catalog", "discover", "state", "about", "activate-version", "properties", "log-based"];

/// The about document as JSON.
pub fn about_json() -> Value {
    let mut properties = Map::new();
    for s in SETTINGS {
        let mut p = Map::new();
        p.insert("type".into(), json!([s.kind, "null"]));
        p.insert("description".into(), json!(s.description));
        if let Some(default) = s.default {
            p.insert("default".into(), default.to_json());
        }
        if s.secret {
            p.insert("secret".into(), json!(true));
            p.insert("writeOnly".into(), json!(true));
        }
        properties.insert(s.name.into(), Value::Object(p));
    }
    json!({
        "name": "tap-heroku",
        "description": "Singer tap for Heroku Postgres and any PostgreSQL: FULL_TABLE and key-based INCREMENTAL replication over SSL.",
        "version": env!("CARGO_PKG_VERSION"),
        "sdk_version": null,
        "supported_python_versions": null,
        "capabilities": CAPABILITIES,
        "settings": {"type": "object", "properties": properties, "required": []},
    })
}

/// The settings as a Markdown table.
pub fn about_markdown() -> String {
    let mut out = format!("# tap-heroku {}\n\nCapabilities: {}\n\n", env!("CARGO_PKG_VERSION"), CAPABILITIES.join(", "));
    out.push_str("| Setting | Type | Default | Description |\n|---|---|---|---|\n");
    for s in SETTINGS {
        let secret = if s.secret { " (secret)" } else { "" };
        out.push_str(&format!(
            "| {} | {}{} | {} | {} |\n",
            s.name,
            s.kind,
            secret,
            s.default.map(|d| d.to_json().to_string()).unwrap_or_default(),
            s.description
        ));
    }
    out
}

/// Writes the about document to stdout.
pub fn print(format: AboutFormat) -> Result<()> {
    let text = match format {
        AboutFormat::Json => serde_json::to_string_pretty(&about_json()).expect("about serializes"),
        AboutFormat::Markdown => about_markdown(),
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", text.trim_end()).and_then(|()| out.flush()).context(ErrorKind::Output, || "writing --about to stdout")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_is_described_and_password_is_secret() {
        let about = about_json();
        let props = about["settings"]["properties"].as_object().unwrap();
        assert_eq!(props.len(), SETTINGS.len());
        assert_eq!(props["password"]["secret"], json!(true));
        assert_eq!(props["port"]["default"], json!(5432));
        assert!(about["capabilities"].as_array().unwrap().contains(&json!("discover")));
        assert!(about_markdown().contains("| password | string (secret) |"));
    }

    /// The lines of `text` that are Markdown table rows.
    fn table_rows(text: &str) -> Vec<&str> {
        text.lines().filter(|l| l.starts_with('|')).collect()
    }

    #[test]
    fn configuration_doc_shows_the_markdown_table() {
        // docs/configuration.md holds one table, the settings; it must be what --about prints.
        let doc = include_str!("../docs/configuration.md");
        let markdown = about_markdown();
        assert_eq!(
            table_rows(doc),
            table_rows(&markdown),
            "docs/configuration.md's settings table differs from `tap-heroku --about --format markdown`; paste that table there"
        );
    }
}
