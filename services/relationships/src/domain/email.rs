//! The email draft that goes with a reseller request: editable, but it must
//! keep the link.

use sovra_runtime::Error;

/// Where the link goes in an edited draft.
pub const URL_PLACEHOLDER: &str = "{url}";

const MAX_SUBJECT: usize = 200;
const MAX_BODY: usize = 10_000;

/// A subject and body, both containing the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailDraft {
    pub subject: String,
    pub body: String,
}

/// The draft for `partner` and `url`, with the partner's edits applied.
/// An edited body must contain `{url}`; an edited subject may.
pub fn reseller_draft(
    partner: &str,
    url: &str,
    subject: &str,
    body: &str,
) -> Result<EmailDraft, Error> {
    if subject.chars().count() > MAX_SUBJECT {
        return Err(Error::invalid(
            "email_subject",
            format!("must be at most {MAX_SUBJECT} characters"),
        ));
    }
    if body.chars().count() > MAX_BODY {
        return Err(Error::invalid(
            "email_body",
            format!("must be at most {MAX_BODY} characters"),
        ));
    }
    if !body.trim().is_empty() && !body.contains(URL_PLACEHOLDER) {
        return Err(Error::invalid(
            "email_body",
            format!(
                "must contain {URL_PLACEHOLDER} where the link goes, so the customer can accept"
            ),
        ));
    }
    let subject = if subject.trim().is_empty() {
        format!("{partner} invites you to a reseller relationship")
    } else {
        subject.trim().replace(URL_PLACEHOLDER, url)
    };
    let body = if body.trim().is_empty() {
        format!(
            "Hello,\n\n{partner} would like to become your cloud reseller. With a reseller \
             relationship, {partner} can provision and manage services for your company; \
             you can still buy on your own.\n\nA global admin of your company can review \
             and accept the request here:\n\n{url}\n\nThank you,\n{partner}\n"
        )
    } else {
        body.replace(URL_PLACEHOLDER, url)
    };
    Ok(EmailDraft { subject, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_draft_carries_the_link_and_the_partner() {
        let d = reseller_draft("Fabrikam", "https://x/reseller/c", "", "").unwrap();
        assert!(d.body.contains("https://x/reseller/c"));
        assert!(d.subject.contains("Fabrikam"));
    }

    #[test]
    fn an_edited_body_must_keep_the_link() {
        let e = reseller_draft("F", "https://x", "", "Hi, please accept").unwrap_err();
        assert_eq!(e.violations[0].field, "email_body");
        let d = reseller_draft("F", "https://x", "Join {url}", "Click {url} now").unwrap();
        assert_eq!(d.body, "Click https://x now");
        assert_eq!(d.subject, "Join https://x");
    }
}
