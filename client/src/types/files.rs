use serde::{Deserialize, Serialize};

/// The file formats an environment's secrets are exported to and imported from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// `KEY=value` lines (`.env`).
    Dotenv,
    /// One JSON object of strings.
    Json,
    /// One YAML mapping of strings.
    Yaml,
}

impl FileFormat {
    /// Every format, in the order they are documented.
    pub const ALL: [Self; 3] = [Self::Dotenv, Self::Json, Self::Yaml];

    /// The name the API uses (`?format=`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dotenv => "dotenv",
            Self::Json => "json",
            Self::Yaml => "yaml",
        }
    }

    /// The format a file name suggests: `.env`, `x.env` and `.env.production` are dotenv,
    /// `*.json` JSON, `*.yaml` and `*.yml` YAML; anything else `None`.
    pub fn from_file_name(name: &str) -> Option<Self> {
        let name = name.rsplit(['/', '\\']).next().unwrap_or(name);
        let lower = name.to_ascii_lowercase();
        if lower == ".env" || lower.starts_with(".env.") || lower.ends_with(".env") {
            Some(Self::Dotenv)
        } else if lower.ends_with(".json") {
            Some(Self::Json)
        } else if lower.ends_with(".yaml") || lower.ends_with(".yml") {
            Some(Self::Yaml)
        } else {
            None
        }
    }
}

impl std::fmt::Display for FileFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for FileFormat {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Self::ALL.into_iter().find(|f| f.as_str() == s).ok_or(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_name_suggests_its_format() {
        for (name, format) in [
            (".env", Some(FileFormat::Dotenv)),
            ("config/.env.production", Some(FileFormat::Dotenv)),
            ("staging.env", Some(FileFormat::Dotenv)),
            ("secrets.JSON", Some(FileFormat::Json)),
            ("a/b.yml", Some(FileFormat::Yaml)),
            ("b.yaml", Some(FileFormat::Yaml)),
            ("secrets.txt", None),
            ("environment", None),
        ] {
            assert_eq!(FileFormat::from_file_name(name), format, "{name}");
        }
        assert_eq!("yaml".parse(), Ok(FileFormat::Yaml));
        assert_eq!("YAML".parse::<FileFormat>(), Err(()));
    }
}
