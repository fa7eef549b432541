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

/// Every file, newest first: the server's order, page after page.
pub async fn list(context: &Context) -> Result<(), CliError> {
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
    context.out.result(&files, || table(&files));
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

/// Columns: key, size, date, original name (last, since it may contain spaces).
fn table(files: &[Listed]) -> String {
    if files.is_empty() {
        return "no files".to_owned();
    }
    let key_width = files.iter().map(|file| file.key.len()).max().unwrap_or(0);
    files
        .iter()
        .map(|file| {
            format!(
                "{:key_width$}  {:>10}  {}  {}",
                file.key,
                human_size(file.size),
                file.created_at,
                file.filename
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
