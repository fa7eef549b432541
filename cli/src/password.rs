//! Where a password comes from: `STRONGBOX_PASSWORD`, else the first line of a piped
//! stdin (scripts), else a prompt on the terminal without echo. Never a command-line
//! flag, which any user on the machine could read from the process list.

use std::io::{BufRead, IsTerminal};

use crate::config_dir::blocking;
use crate::errors::CliError;

pub const PASSWORD_ENV: &str = "STRONGBOX_PASSWORD";

/// Whether a prompted password is asked twice (a typo at registration locks the
/// account's owner out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirm {
    Once,
    Twice,
}

pub async fn read_password(confirm: Confirm) -> Result<String, CliError> {
    if let Some(password) = std::env::var_os(PASSWORD_ENV) {
        return password
            .into_string()
            .map_err(|_| CliError::Password(format!("{PASSWORD_ENV} is not valid UTF-8")));
    }
    // Both the pipe and the prompt block the thread until the user or writer is done.
    blocking(move || {
        if std::io::stdin().is_terminal() {
            prompt(confirm)
        } else {
            first_line(std::io::stdin().lock())
        }
    })
    .await
}

fn prompt(confirm: Confirm) -> Result<String, CliError> {
    let ask = |label: &str| {
        rpassword::prompt_password(label).map_err(|err| CliError::Password(err.to_string()))
    };
    let password = ask("Password: ")?;
    if confirm == Confirm::Twice && ask("Repeat the password: ")? != password {
        return Err(CliError::Password("the two passwords differ".into()));
    }
    Ok(password)
}

/// The first line, without its line ending; spaces are part of a password.
fn first_line(mut input: impl BufRead) -> Result<String, CliError> {
    let mut line = String::new();
    let read = input
        .read_line(&mut line)
        .map_err(|err| CliError::Password(err.to_string()))?;
    if read == 0 {
        return Err(CliError::Password(format!(
            "standard input is empty; pipe the password in or set {PASSWORD_ENV}"
        )));
    }
    let end = line.trim_end_matches(['\n', '\r']).len();
    line.truncate(end);
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_piped_password_is_its_first_line_verbatim() {
        let password = first_line(&b" two words \r\nsecond line\n"[..]).unwrap();
        assert_eq!(password, " two words ");
        assert!(first_line(&b""[..]).is_err());
    }
}
