//! The SQL lexer: tokens with their kind (names vs literals), never panicking on any input.

/// Kind of a lexed token, so classifiers can tell names from literals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Unquoted identifier or keyword (compare with ASCII case folding).
    Ident,
    /// `"..."` or `U&"..."` identifier; text is the raw body with `""` escapes.
    QuotedIdent,
    /// `'...'` or `N'...'` string; text is the raw body with `''` escapes.
    Str,
    /// `E'...'` string; text is the raw body with backslash escapes.
    EStr,
    /// `U&'...'` string; text is the raw body with Unicode escapes.
    UStr,
    /// `B'...'` / `X'...'` bit-string literal; text is the raw body.
    BitStr,
    /// `$tag$...$tag$` string; text is the body between the tags.
    DollarStr,
    /// Numeric literal.
    Number,
    /// Positional parameter such as `$1`.
    Param,
    /// Any other single byte (operators and punctuation).
    Op,
}

/// One token, borrowing its text from the lexed input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token<'a> {
    /// What sort of token this is.
    pub kind: TokenKind,
    /// Token bytes (quotes and dollar tags stripped, escapes left as written).
    pub text: &'a [u8],
}

/// Iterator over the tokens of raw SQL bytes; unterminated strings/comments end the stream.
pub struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

/// True for bytes that continue an identifier (letters, digits, `_`, `$`, non-ASCII).
pub(super) fn is_ident_cont(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

impl<'a> Lexer<'a> {
    /// Starts lexing `src` from its first byte.
    pub fn new(src: &'a [u8]) -> Self {
        Lexer { src, pos: 0 }
    }

    fn at(&self, i: usize) -> Option<u8> {
        self.src.get(i).copied()
    }

    /// First index at or after `i` whose byte doesn't satisfy `f`.
    fn span(&self, i: usize, f: impl Fn(u8) -> bool) -> usize {
        let rest = self.src.get(i..).unwrap_or_default();
        i + rest.iter().position(|&b| !f(b)).unwrap_or(rest.len())
    }

    /// Ends the stream (unterminated string or comment).
    fn stop<T>(&mut self) -> Option<T> {
        self.pos = self.src.len();
        None
    }

    /// Skips whitespace and comments; `None` at end of input or inside an unterminated comment.
    fn skip_trivia(&mut self) -> Option<()> {
        loop {
            let (c, next) = (self.at(self.pos)?, self.at(self.pos + 1));
            if matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
                self.pos += 1;
            } else if c == b'-' && next == Some(b'-') {
                self.pos = self.span(self.pos, |b| b != b'\n' && b != b'\r');
            } else if c == b'/' && next == Some(b'*') {
                let mut depth = 1usize;
                self.pos += 2;
                while depth > 0 {
                    let Some(c) = self.at(self.pos) else {
                        return self.stop();
                    };
                    match (c, self.at(self.pos + 1)) {
                        (b'/', Some(b'*')) => (depth, self.pos) = (depth + 1, self.pos + 2),
                        (b'*', Some(b'/')) => (depth, self.pos) = (depth - 1, self.pos + 2),
                        _ => self.pos += 1,
                    }
                }
            } else {
                return Some(());
            }
        }
    }

    /// Lexes a quoted token whose body starts at `start` (just after the opening quote).
    fn quoted(&mut self, kind: TokenKind, start: usize) -> Option<Token<'a>> {
        let q = if kind == TokenKind::QuotedIdent {
            b'"'
        } else {
            b'\''
        };
        let mut i = start;
        loop {
            let Some(c) = self.at(i) else {
                return self.stop();
            };
            let escaped = kind == TokenKind::EStr && c == b'\\';
            if escaped || (c == q && kind != TokenKind::BitStr && self.at(i + 1) == Some(q)) {
                i += 2;
            } else if c == q {
                self.pos = i + 1;
                return Some(Token {
                    kind,
                    text: self.src.get(start..i)?,
                });
            } else {
                i += 1;
            }
        }
    }

    fn tok(&mut self, kind: TokenKind, start: usize, end: usize) -> Option<Token<'a>> {
        self.pos = end;
        Some(Token {
            kind,
            text: self.src.get(start..end)?,
        })
    }
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        use TokenKind::*;
        self.skip_trivia()?;
        let p = self.pos;
        let (c, next) = (self.at(p)?, self.at(p + 1));
        let digit = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_digit());
        match c {
            b'\'' => self.quoted(Str, p + 1),
            b'"' => self.quoted(QuotedIdent, p + 1),
            b'$' if digit(next) => self.tok(Param, p, self.span(p + 1, |b| b.is_ascii_digit())),
            b'$' => {
                // Dollar quote: `$$` or `$tag$` where tag is an identifier without `$`.
                let mut e = p + 1;
                if next.is_some_and(is_ident_start) {
                    e = self.span(e, |b| is_ident_cont(b) && b != b'$');
                }
                if self.at(e) != Some(b'$') {
                    return self.tok(Op, p, p + 1);
                }
                let (tag, body) = (self.src.get(p..=e)?, e + 1);
                let rest = self.src.get(body..)?;
                let Some(len) = rest.windows(tag.len()).position(|w| w == tag) else {
                    return self.stop();
                };
                let t = self.tok(DollarStr, body, body + len);
                self.pos = body + len + tag.len();
                t
            }
            b'0'..=b'9' | b'.' if c != b'.' || digit(next) => {
                let e = self.span(p, |b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
                self.tok(Number, p, e)
            }
            _ if is_ident_start(c) => {
                let e = self.span(p + 1, is_ident_cont);
                // Prefixed literals: E'..', N'..', B'..', X'..', U&'..', U&"..".
                match (e - p, c.to_ascii_lowercase(), self.at(e), self.at(e + 1)) {
                    (1, b'e', Some(b'\''), _) => self.quoted(EStr, e + 1),
                    (1, b'n', Some(b'\''), _) => self.quoted(Str, e + 1),
                    (1, b'b' | b'x', Some(b'\''), _) => self.quoted(BitStr, e + 1),
                    (1, b'u', Some(b'&'), Some(b'\'')) => self.quoted(UStr, e + 2),
                    (1, b'u', Some(b'&'), Some(b'"')) => self.quoted(QuotedIdent, e + 2),
                    _ => self.tok(Ident, p, e),
                }
            }
            _ => self.tok(Op, p, p + 1),
        }
    }
}
