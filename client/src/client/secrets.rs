//! One secret at a time: its value, its history, a rollback; and whole environments as files.

use reqwest::Method;
use reqwest::header::CONTENT_TYPE;
use secrecy::SecretString;

use super::{Client, api_error, read_body};
use crate::Error;
use crate::types::{FileFormat, Page, RollbackRequest, Secret, SecretVersion, WriteReport};

/// The most versions one page of a secret's history holds (the server's maximum).
const VERSIONS_PER_PAGE: &str = "200";

impl Client {
    /// A secret's current version, with its value; with `resolve`, its `${…}` references are
    /// resolved (the reader's permission is checked on every place referenced).
    pub async fn get_secret(
        &self,
        org: &str,
        project: &str,
        env: &str,
        key: &str,
        resolve: bool,
    ) -> Result<Secret, Error> {
        let mut url = self.secrets_url(org, project, env, Some(key))?;
        url.query_pairs_mut()
            .append_pair("resolve", if resolve { "true" } else { "false" });
        self.json(self.request(Method::GET, url)).await
    }

    /// One page of a secret's versions (metadata only), newest first; `cursor` is the previous
    /// page's `next_cursor`. A deleted secret keeps its history.
    pub async fn secret_versions(
        &self,
        org: &str,
        project: &str,
        env: &str,
        key: &str,
        cursor: Option<&str>,
    ) -> Result<Page<SecretVersion>, Error> {
        let mut url = self.env_url(org, project, env, &["secrets", key, "versions"])?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("limit", VERSIONS_PER_PAGE);
            if let Some(cursor) = cursor {
                query.append_pair("cursor", cursor);
            }
        }
        self.json(self.request(Method::GET, url)).await
    }

    /// One version of a secret, with its value as stored then.
    pub async fn get_secret_version(
        &self,
        org: &str,
        project: &str,
        env: &str,
        key: &str,
        version: i64,
    ) -> Result<Secret, Error> {
        let version = version.to_string();
        let url = self.env_url(org, project, env, &["secrets", key, "versions", &version])?;
        self.json(self.request(Method::GET, url)).await
    }

    /// Makes the value of `req.version` current again, as a new version.
    pub async fn rollback_secret(
        &self,
        org: &str,
        project: &str,
        env: &str,
        key: &str,
        req: &RollbackRequest,
    ) -> Result<Secret, Error> {
        let url = self.env_url(org, project, env, &["secrets", key, "rollback"])?;
        self.json(self.request(Method::POST, url).json(req)).await
    }

    /// The environment as a file in `format`: values as stored (references kept, so the file
    /// imports back as it is) unless `resolve`.
    pub async fn export_secrets(
        &self,
        org: &str,
        project: &str,
        env: &str,
        format: FileFormat,
        resolve: bool,
    ) -> Result<SecretString, Error> {
        let mut url = self.env_url(org, project, env, &["secrets", "export"])?;
        url.query_pairs_mut()
            .append_pair("format", format.as_str())
            .append_pair("resolve", if resolve { "true" } else { "false" });
        let response = self
            .request(Method::GET, url)
            .send()
            .await
            .map_err(Error::Transport)?;
        if !response.status().is_success() {
            return Err(api_error(response, self.max_response_bytes).await);
        }
        let path = response.url().path().to_owned();
        let body = read_body(response, self.max_response_bytes).await?;
        String::from_utf8(body)
            .map(SecretString::from)
            .map_err(|_| Error::Decode(format!("{path}: the file is not UTF-8")))
    }

    /// Imports `file` (the contents of a file in `format`) into the environment in one
    /// transaction: keys are created or updated, identical ones left alone. A malformed file
    /// changes nothing; the 422 names its line, never its text.
    pub async fn import_secrets(
        &self,
        org: &str,
        project: &str,
        env: &str,
        format: FileFormat,
        file: Vec<u8>,
    ) -> Result<WriteReport, Error> {
        let mut url = self.env_url(org, project, env, &["secrets", "import"])?;
        url.query_pairs_mut().append_pair("format", format.as_str());
        let content_type = match format {
            FileFormat::Dotenv => "text/plain; charset=utf-8",
            FileFormat::Json => "application/json",
            FileFormat::Yaml => "application/yaml",
        };
        let request = self
            .request(Method::POST, url)
            .header(CONTENT_TYPE, content_type)
            .body(file);
        self.json(request).await
    }
}
