//! Field classification: what a field's name says its value is, and the order of preview lines.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Kind {
    Email,
    Name,
    Phone,
    Ip,
    PostalCode,
    ClickId,
    Sensitive,
    FreeText,
    Utm,
    Company,
    Geo,
    Other,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct SortKey {
    pub(super) rank: u8,
    pub(super) sub: u8,
    pub(super) norm: String,
    pub(super) original: String,
    pub(super) kind: Kind,
}

/// Lower-case, every run of non-alphanumerics becomes one `_`: `First Name` and `first-name`
/// both become `first_name`, so vendor labels (Webflow) classify like canonical names.
pub(super) fn normalize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    while out.ends_with('_') {
        out.pop();
    }
    out
}

pub(super) const NAME_FIELDS: &[&str] = &[
    "first_name",
    "firstname",
    "given_name",
    "middle_name",
    "last_name",
    "lastname",
    "family_name",
    "surname",
    "full_name",
    "fullname",
    "name",
    "your_name",
    "display_name",
    "contact",
    "contact_name",
    "contact_person",
];

pub(super) const CLICK_ID_FIELDS: &[&str] = &[
    "gclid",
    "gcl_id",
    "fbclid",
    "msclkid",
    "dclid",
    "wbraid",
    "gbraid",
    "ttclid",
    "yclid",
    "twclid",
    "li_fat_id",
    "fbc",
    "fbp",
];

pub(super) const SENSITIVE_WORDS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "key",
    "apikey",
    "dob",
    "birthday",
    "birthdate",
    "birth",
    "ssn",
    "passport",
    "iban",
    "card",
    "cvv",
    "cvc",
    "gender",
    "sex",
    "religion",
    "ethnicity",
    "health",
    "salary",
];

pub(super) const FREE_TEXT_WORDS: &[&str] = &[
    "note",
    "notes",
    "message",
    "messages",
    "msg",
    "comment",
    "comments",
    "address",
    "street",
    "description",
    "details",
    "remarks",
    "body",
    "text",
    "bio",
    "feedback",
    "question",
    "questions",
    "answer",
    "answers",
    "inquiry",
    "enquiry",
    "request",
    "subject",
    "summary",
    "about",
];

pub(super) const COMPANY_WORDS: &[&str] = &[
    "company",
    "organization",
    "organisation",
    "org",
    "employer",
    "business",
    "firm",
];

pub(super) fn classify(norm: &str) -> Kind {
    let parts: Vec<&str> = norm.split('_').collect();
    let has = |words: &[&str]| parts.iter().any(|p| words.contains(p));
    // Order matters: the first, most protective match wins (`email_address` is an email, not
    // free text; `google_key` is a secret whatever else it says).
    if has(SENSITIVE_WORDS) || norm.contains("password") || norm.contains("birth") {
        Kind::Sensitive
    } else if norm.contains("email") || has(&["mail", "e_mail"]) {
        Kind::Email
    } else if has(&["ip", "ipv4", "ipv6", "ipaddress", "ipaddr"])
        || norm.contains("ip_address")
        || norm == "remote_addr"
    {
        Kind::Ip
    } else if norm.contains("phone")
        || norm.contains("mobile")
        || has(&["tel", "telephone", "cell", "fax", "whatsapp"])
    {
        Kind::Phone
    } else if norm.contains("postal") || norm.contains("postcode") || norm.contains("zip") {
        Kind::PostalCode
    } else if CLICK_ID_FIELDS.contains(&norm) || norm.ends_with("clid") || norm.ends_with("clkid") {
        Kind::ClickId
    } else if norm.starts_with("utm") {
        Kind::Utm
    } else if has(FREE_TEXT_WORDS)
        || norm.contains("address")
        || norm.contains("street")
        || norm.contains("message")
        || norm.contains("comment")
    {
        Kind::FreeText
    } else if NAME_FIELDS.contains(&norm) {
        Kind::Name
    } else if has(COMPANY_WORDS) || norm.contains("company") {
        Kind::Company
    } else if geo_order(&parts).is_some() {
        Kind::Geo
    } else {
        Kind::Other
    }
}

pub(super) fn geo_order(parts: &[&str]) -> Option<u8> {
    let has = |words: &[&str]| parts.iter().any(|p| words.contains(p));
    if has(&["country", "countrycode"]) {
        Some(0)
    } else if has(&["region", "state", "province", "county"]) {
        Some(1)
    } else if has(&["city", "town", "locality"]) {
        Some(2)
    } else {
        None
    }
}

pub(super) fn sort_key(kind: Kind, norm: &str, original: &str) -> SortKey {
    let parts: Vec<&str> = norm.split('_').collect();
    let (rank, sub) = match kind {
        Kind::Email => (0, 0),
        Kind::Name => {
            let sub = match norm {
                "first_name" | "firstname" | "given_name" => 0,
                "middle_name" => 1,
                "last_name" | "lastname" | "family_name" | "surname" => 2,
                "full_name" | "fullname" => 3,
                "name" | "your_name" | "display_name" => 4,
                _ => 5,
            };
            (1, sub)
        }
        Kind::Phone => (2, 0),
        Kind::Company => (3, if norm.contains("company") { 0 } else { 1 }),
        Kind::Geo => (4, geo_order(&parts).unwrap_or(2)),
        Kind::PostalCode => (4, 3),
        Kind::Utm => {
            let sub = match norm {
                "utm_source" => 0,
                "utm_medium" => 1,
                "utm_campaign" => 2,
                "utm_term" => 3,
                "utm_content" => 4,
                _ => 5,
            };
            (5, sub)
        }
        _ => (6, 0),
    };
    SortKey {
        rank,
        sub,
        norm: norm.to_string(),
        original: original.to_string(),
        kind,
    }
}

/// Numbers are shown only where a number cannot be personal data.
pub(super) fn number_is_shown(kind: Kind, norm: &str) -> bool {
    const ID_FIELDS: &[&str] = &[
        "form_id",
        "campaign_id",
        "adgroup_id",
        "ad_group_id",
        "ad_id",
        "creative_id",
        "page_id",
        "site_id",
        "list_id",
    ];
    const WORDS: &[&str] = &[
        "score",
        "budget",
        "amount",
        "quantity",
        "qty",
        "size",
        "employees",
        "revenue",
        "rating",
        "price",
        "count",
        "version",
        "seats",
        "licenses",
    ];
    match kind {
        Kind::Company | Kind::Geo | Kind::Utm => true,
        Kind::Other => ID_FIELDS.contains(&norm) || norm.split('_').any(|p| WORDS.contains(&p)),
        _ => false,
    }
}
