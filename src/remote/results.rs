//! What became of the message and each recipient, kept as values until quill-remote writes its
//! report (`crate::mail::proto::remote_report`), where [`Results::report`] renders them, once.
//!
//! A result is either Quill's own finding, a [`Status`] rendered `WORDS (#C.S.D)`, or words
//! around what a server answered ("… Remote host said: 550 5.1.1 no such user"), which carry
//! the server's own code and get none added, as qmail-remote's texts have it.
#![forbid(unsafe_code)]

use crate::base::fail::{Outcome, Status};
use crate::mail::proto::remote_report::{recipient_letter, Report, UNREACHABLE};
use std::fmt;

/// The words of one result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Text {
    /// Quill's own finding, with its enhanced status code.
    Status(Status),
    /// A server's answer with our words around it, or a summary of earlier results (already
    /// rendered inside it): shown as it is, no code added.
    Verbatim(Outcome, String),
}

impl Text {
    /// Success, temporary or permanent.
    pub fn outcome(&self) -> Outcome {
        match self {
            Text::Status(status) => status.outcome,
            Text::Verbatim(outcome, _) => *outcome,
        }
    }

    /// The same failure marked as being about the destination, not the message: temporary,
    /// its words after [`UNREACHABLE`] (quill-send backs the destination off).
    pub fn unreachable(self) -> Text {
        match self {
            Text::Status(status) => {
                Text::Status(Status::temporary(status.code, format!("{UNREACHABLE}{}", status.text)))
            }
            Text::Verbatim(_, words) => Text::Verbatim(Outcome::Temporary, format!("{UNREACHABLE}{words}")),
        }
    }
}

impl From<Status> for Text {
    fn from(status: Status) -> Text {
        Text::Status(status)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Text::Status(status) => status.fmt(f),
            Text::Verbatim(_, words) => f.write_str(words),
        }
    }
}

/// The results of one run: per recipient in order, then the message's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Results {
    pub recipients: Vec<Text>,
    pub message: Text,
}

impl Results {
    /// Every recipient and the message ended the same way (before any RCPT).
    pub fn all(count: usize, text: Text) -> Results {
        Results { recipients: vec![text.clone(); count], message: text }
    }

    /// The report's entries: each recipient's letter (`r`, `s`, `h`) and the message's (`K`,
    /// `Z`, `D`) from their outcomes, each text rendered here and nowhere before.
    pub fn report(&self) -> Report {
        let recipients = self.recipients.iter().map(|t| (recipient_letter(t.outcome()), t.to_string())).collect();
        Report { recipients, message: (self.message.outcome().letter(), self.message.to_string()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::fail::Enhanced;

    #[test]
    fn texts_render_once_as_before() {
        let refused = Text::Status(Status::permanent(Enhanced::TOO_BIG, "Sorry, too big."));
        let said = Text::Verbatim(
            Outcome::Permanent,
            "mx[192.0.2.1] does not like the recipient. Remote host said: 550 no".into(),
        );
        let results = Results { recipients: vec![said.clone()], message: refused.clone() };
        let report = results.report();
        assert_eq!(
            report.encode(),
            b"hmx[192.0.2.1] does not like the recipient. Remote host said: 550 no\0DSorry, too big. (#5.3.4)\0"
        );
        // The mark of an unreachable destination goes before the words, the code stays last.
        let dns = Text::Status(Status::temporary(Enhanced::DIRECTORY, "DNS lookup of x failed temporarily: y."));
        assert_eq!(dns.unreachable().to_string(), "Unreachable: DNS lookup of x failed temporarily: y. (#4.4.3)");
        assert_eq!(Results::all(2, refused).report().recipients.len(), 2);
    }
}
