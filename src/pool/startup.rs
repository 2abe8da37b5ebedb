//! What a backend answered to a client's start-up settings, remembered per pool, so that a
//! client whose settings an earlier client's start-up already validated can log in while
//! every backend is busy (transaction pooling), as PgBouncer's clients can, instead of
//! waiting for one and failing after `checkout_timeout`.

use std::sync::Mutex;

/// Distinct start-up setting lists remembered per pool; beyond this many, the oldest goes.
const REMEMBERED: usize = 64;

/// The outcome of one validated start-up: what the client is told and what it then holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupAnswer {
    /// The ParameterStatus report, in order.
    pub reported: Vec<(String, String)>,
    /// The client's settings after the server normalised them, its defaults filled in.
    pub values: Vec<(String, String)>,
    /// The NoticeResponses applying them brought (whole messages; usually none).
    pub notices: bytes::Bytes,
}

/// A client's start-up settings as it sent them (names and values, in order).
type Settings = Vec<(String, String)>;

/// Start-up answers by the client's settings as it sent them.
#[derive(Debug, Default)]
pub struct StartupMemo {
    answers: Mutex<Vec<(Settings, StartupAnswer)>>,
}

impl StartupMemo {
    /// The answer a backend gave for exactly these settings, if one is remembered.
    pub fn get(&self, asked: &[(String, String)]) -> Option<StartupAnswer> {
        let answers = self.answers.lock().ok()?;
        answers
            .iter()
            .find(|(k, _)| k == asked)
            .map(|(_, a)| a.clone())
    }

    /// Remembers (or refreshes) a backend's answer for `asked`: the latest one wins, so a
    /// changed server default is picked up by the next start-up that reaches a backend.
    pub fn put(&self, asked: Settings, answer: StartupAnswer) {
        let Ok(mut answers) = self.answers.lock() else {
            return;
        };
        answers.retain(|(k, _)| *k != asked);
        if answers.len() >= REMEMBERED {
            answers.remove(0);
        }
        answers.push((asked, answer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn answers_only_the_exact_settings_and_keeps_the_latest() {
        let memo = StartupMemo::default();
        let asked = pairs(&[("application_name", "app"), ("DateStyle", "iso")]);
        let answer = |tz: &str| StartupAnswer {
            notices: bytes::Bytes::new(),
            reported: pairs(&[("TimeZone", tz)]),
            values: pairs(&[("DateStyle", "ISO, MDY")]),
        };
        assert_eq!(memo.get(&asked), None);
        memo.put(asked.clone(), answer("UTC"));
        assert_eq!(memo.get(&asked), Some(answer("UTC")));
        assert_eq!(memo.get(&pairs(&[("application_name", "app")])), None);
        assert_eq!(
            memo.get(&pairs(&[("DateStyle", "iso"), ("application_name", "app")])),
            None
        );
        memo.put(asked.clone(), answer("Europe/Berlin"));
        assert_eq!(memo.get(&asked), Some(answer("Europe/Berlin")));
        for i in 0..REMEMBERED {
            memo.put(
                pairs(&[("application_name", &i.to_string())]),
                answer("UTC"),
            );
        }
        assert_eq!(memo.get(&asked), None, "the oldest went");
    }
}
