//! Stored files: `ls` and `rm`.

use serde::Serialize;
use strongbox_proto::storage::v1::{DeleteFileRequest, FileInfo, ListFilesRequest};

use crate::commands::Context;
use crate::errors::CliError;
use crate::output::{human_size, rfc3339};
use crate::session::Session;

/// The largest page the server serves: fewer round trips for long lists.
const PAGE_SIZE: u32 = 1000;

/// A file as `ls --json` prints it.
#[derive(Debug, Serialize)]
pub struct Listed {
    key: String,
    filename: String,
    size: u64,
    sha256: String,
    content_type: String,
    created_at: String,
}

impl From<FileInfo> for Listed {
    fn from(file: FileInfo) -> Self {
        Self {
            created_at: rfc3339(file.created_at.as_ref()),
            key: file.key,
            filename: file.filename,
            size: file.size,
            sha256: file.sha256,
            content_type: file.content_type,
        }
    }
}

/// Every file, newest first: the server's order, page after page. `long` adds the
/// columns a person checks a download against.
pub async fn list(context: &Context, long: bool) -> Result<(), CliError> {
    let mut session = Session::resume(context).await?;
    let mut files: Vec<Listed> = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ListFilesRequest {
            page_size: PAGE_SIZE,
            page_token,
        };
        let page = session
            .call(|mut clients| {
                let request = request.clone();
                async move { Ok(clients.storage.list_files(request).await?.into_inner()) }
            })
            .await?;
        files.extend(page.files.into_iter().map(Listed::from));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    context.out.result(&files, || table(&files, long));
    Ok(())
}

pub async fn remove(context: &Context, key: &str) -> Result<(), CliError> {
    let mut session = Session::resume(context).await?;
    session
        .call(|mut clients| async move {
            let request = DeleteFileRequest {
                key: key.to_owned(),
            };
            clients.storage.delete_file(request).await?;
            Ok(())
        })
        .await?;
    context
        .out
        .result(&serde_json::json!({ "deleted": key }), || {
            format!("deleted {key}")
        });
    Ok(())
}

/// Columns: key, size, date, original name (last, since it may contain spaces); `long`
/// puts the exact size in bytes, the content type and the SHA-256 before the name.
fn table(files: &[Listed], long: bool) -> String {
    if files.is_empty() {
        return "no files".to_owned();
    }
    let key_width = width(files, |file| file.key.len());
    let bytes_width = width(files, |file| file.size.to_string().len());
    let type_width = width(files, |file| file.content_type.len());
    files
        .iter()
        .map(|file| {
            let size = if long {
                format!("{:>bytes_width$}", file.size)
            } else {
                format!("{:>10}", human_size(file.size))
            };
            let details = if long {
                format!("  {:type_width$}  {}", file.content_type, file.sha256)
            } else {
                String::new()
            };
            format!(
                "{:key_width$}  {size}  {}{details}  {}",
                file.key, file.created_at, file.filename
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn width(files: &[Listed], of: impl Fn(&Listed) -> usize) -> usize {
    files.iter().map(of).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(key: &str, size: u64, sha256: &str) -> Listed {
        Listed {
            key: key.into(),
            filename: "my notes.txt".into(),
            size,
            sha256: sha256.into(),
            content_type: "text/plain".into(),
            created_at: "2026-11-05T14:03:09Z".into(),
        }
    }

    #[test]
    fn the_long_listing_shows_bytes_and_sha256() {
        let files = [
            listed("u/1-a-notes.txt", 2048, &"ab".repeat(32)),
            listed("u/2-b-notes.txt", 7, &"cd".repeat(32)),
        ];
        let short = table(&files, false);
        assert!(!short.contains(&"ab".repeat(32)), "{short}");
        assert!(short.contains("2.0 KiB"), "{short}");
        let long = table(&files, true);
        let lines: Vec<&str> = long.lines().collect();
        assert_eq!(
            lines[0],
            format!(
                "u/1-a-notes.txt  2048  2026-11-05T14:03:09Z  text/plain  {}  my notes.txt",
                "ab".repeat(32)
            )
        );
        assert!(lines[1].starts_with("u/2-b-notes.txt     7  "), "{long}");
    }
}
