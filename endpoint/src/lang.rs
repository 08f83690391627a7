//! The display language both app windows share: Japanese or English, picked from the system
//! locale, switchable in the window. Each app keeps its own strings as an enum implementing
//! [`Texts`], so `lang.t(Text::Title)` works in both and a missing translation is a compile
//! error, not a blank label.

/// A display language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// 日本語
    Ja,
    /// English
    En,
}

/// An app's strings: every id has a text in every language.
pub trait Texts: Copy {
    /// The text for this id in `lang`.
    fn text(self, lang: Lang) -> &'static str;
}

impl Lang {
    /// The language of the system locale: the first of `LC_ALL`, `LC_MESSAGES`, `LANG`
    /// (POSIX precedence) that is set and non-empty; `no_locale` when none is (each app
    /// chooses for its audience).
    pub fn from_env(no_locale: Lang) -> Self {
        let value = ["LC_ALL", "LC_MESSAGES", "LANG"]
            .iter()
            .filter_map(|k| std::env::var(k).ok())
            .find(|v| !v.is_empty());
        Self::from_locale(value.as_deref(), no_locale)
    }

    /// The language for a locale string such as `ja_JP.UTF-8` or `en_US.UTF-8`: `ja*` is
    /// Japanese, any other locale (`C` and `POSIX` too) English, no locale `no_locale`.
    pub fn from_locale(locale: Option<&str>, no_locale: Lang) -> Self {
        match locale {
            None => no_locale,
            Some(l) if l.to_ascii_lowercase().starts_with("ja") => Lang::Ja,
            Some(_) => Lang::En,
        }
    }

    /// The other language (for the switch).
    pub fn other(self) -> Self {
        match self {
            Lang::Ja => Lang::En,
            Lang::En => Lang::Ja,
        }
    }

    /// The name of this language in itself, for the switch button.
    pub fn native_name(self) -> &'static str {
        match self {
            Lang::Ja => "日本語",
            Lang::En => "English",
        }
    }

    /// The short code (`ja`, `en`), as `--lang` takes it and window reports print it.
    pub fn code(self) -> &'static str {
        match self {
            Lang::Ja => "ja",
            Lang::En => "en",
        }
    }

    /// The text for `id` in this language.
    pub fn t<T: Texts>(self, id: T) -> &'static str {
        id.text(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy)]
    struct Hello;

    impl Texts for Hello {
        fn text(self, lang: Lang) -> &'static str {
            match lang {
                Lang::Ja => "こんにちは",
                Lang::En => "Hello",
            }
        }
    }

    #[test]
    fn the_locale_picks_the_language() {
        assert_eq!(Lang::from_locale(Some("ja_JP.UTF-8"), Lang::En), Lang::Ja);
        assert_eq!(Lang::from_locale(Some("JA"), Lang::En), Lang::Ja);
        assert_eq!(Lang::from_locale(Some("en_US.UTF-8"), Lang::Ja), Lang::En);
        assert_eq!(Lang::from_locale(Some("C"), Lang::Ja), Lang::En);
        assert_eq!(Lang::from_locale(None, Lang::Ja), Lang::Ja);
        assert_eq!(Lang::from_locale(None, Lang::En), Lang::En);
    }

    #[test]
    fn texts_are_looked_up_in_the_language() {
        assert_eq!(Lang::Ja.t(Hello), "こんにちは");
        assert_eq!(Lang::En.t(Hello), "Hello");
        assert_eq!(Lang::Ja.other(), Lang::En);
        assert_eq!(Lang::En.code(), "en");
    }
}
