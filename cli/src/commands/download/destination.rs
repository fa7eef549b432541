//! Where downloaded files land. One key goes to `-o PATH` (a file, or into an existing
//! folder) or under its original name in the current folder; several keys go into one
//! folder, `-o DIR` (created if missing) or the current one, each under its original
//! name, or under its key's last part when two of them share a name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use strongbox_proto::storage::v1::FileInfo;

use crate::errors::CliError;

/// A file to download, and where it goes.
#[derive(Debug)]
pub struct Target {
    pub info: FileInfo,
    pub destination: PathBuf,
}

/// Where the one file of a download goes: `-o PATH` as given, or inside it when it is a
/// folder; else its original name in the current folder.
pub fn for_one(output: Option<&Path>, info: FileInfo) -> Target {
    let named = || PathBuf::from(local_name(&info.filename, &info.key));
    let destination = match output {
        Some(path) if path.is_dir() => path.join(named()),
        Some(path) => path.to_owned(),
        None => named(),
    };
    Target { info, destination }
}

/// The folder several files go into: `-o DIR`, created if missing, or the current one.
pub async fn folder(output: Option<&Path>) -> Result<PathBuf, CliError> {
    let Some(folder) = output else {
        return Ok(PathBuf::from("."));
    };
    match tokio::fs::metadata(folder).await {
        Ok(metadata) if metadata.is_dir() => Ok(folder.to_owned()),
        Ok(_) => Err(CliError::Refused(format!(
            "{} is not a folder; with several keys, -o names the folder to save them in",
            folder.display()
        ))),
        Err(_) => tokio::fs::create_dir_all(folder)
            .await
            .map(|()| folder.to_owned())
            .map_err(|err| CliError::file(folder, err)),
    }
}

/// Where each of several files goes in `folder`. Original names are not unique (two
/// folders' `notes.txt`), so files that would share one are named by their keys, which
/// are.
pub fn in_folder(folder: &Path, files: Vec<FileInfo>) -> Vec<Target> {
    let names: Vec<String> = files
        .iter()
        .map(|info| local_name(&info.filename, &info.key))
        .collect();
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for name in &names {
        *uses.entry(name.as_str()).or_default() += 1;
    }
    let shared: Vec<bool> = names.iter().map(|name| uses[name.as_str()] > 1).collect();
    files
        .into_iter()
        .zip(names.iter().zip(shared))
        .map(|(info, (name, shared))| {
            let name = if shared {
                local_name("", &info.key)
            } else {
                name.clone()
            };
            Target {
                destination: folder.join(name),
                info,
            }
        })
        .collect()
}

/// A name that is safe to create in a folder: the original name comes from whoever
/// uploaded the file, so it may hold a path (`../../.bashrc`), separators, or control
/// characters. Only its last component is used, and the key's (sanitized by the server)
/// when nothing usable is left.
fn local_name(filename: &str, key: &str) -> String {
    let usable = |name: &str| {
        let cleaned: String = name.chars().filter(|c| !c.is_control()).collect();
        let cleaned = cleaned.trim().to_owned();
        (!cleaned.is_empty() && cleaned != "." && cleaned != "..").then_some(cleaned)
    };
    let last = |name: &str| {
        name.rsplit(['/', '\\'])
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    usable(&last(filename))
        .or_else(|| usable(&last(key)))
        .unwrap_or_else(|| "download".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(filename: &str, key: &str) -> FileInfo {
        FileInfo {
            filename: filename.into(),
            key: key.into(),
            ..FileInfo::default()
        }
    }

    #[test]
    fn names_from_the_server_cannot_escape_the_folder() {
        let key = "3f1c/1700000000-ab12-report.pdf";
        assert_eq!(local_name("report.pdf", key), "report.pdf");
        assert_eq!(local_name("photos/2024/cat.jpg", key), "cat.jpg");
        assert_eq!(local_name("../../.bashrc", key), ".bashrc");
        assert_eq!(local_name("..\\..\\evil.exe", key), "evil.exe");
        assert_eq!(local_name("..", key), "1700000000-ab12-report.pdf");
        assert_eq!(local_name("bad\u{7}name\n", key), "badname");
        assert_eq!(local_name("", ""), "download");
    }

    #[test]
    fn files_sharing_a_name_in_one_folder_are_named_by_their_keys() {
        let targets = in_folder(
            Path::new("out"),
            vec![
                info("a/notes.txt", "u/1-aa-a_notes.txt"),
                info("cat.jpg", "u/2-bb-cat.jpg"),
                info("b/notes.txt", "u/3-cc-b_notes.txt"),
            ],
        );
        let destinations: Vec<&Path> = targets
            .iter()
            .map(|target| target.destination.as_path())
            .collect();
        assert_eq!(
            destinations,
            [
                Path::new("out/1-aa-a_notes.txt"),
                Path::new("out/cat.jpg"),
                Path::new("out/3-cc-b_notes.txt"),
            ]
        );
    }

    #[test]
    fn one_file_goes_where_o_says() {
        let scratch = tempfile::tempdir().unwrap();
        let file = || info("report.pdf", "u/1-aa-report.pdf");
        let into_folder = for_one(Some(scratch.path()), file());
        assert_eq!(into_folder.destination, scratch.path().join("report.pdf"));
        let as_named = for_one(Some(Path::new("copy.pdf")), file());
        assert_eq!(as_named.destination, Path::new("copy.pdf"));
        assert_eq!(for_one(None, file()).destination, Path::new("report.pdf"));
    }
}
