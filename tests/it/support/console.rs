//! A console session signed in over plain HTTP, for tests that post the console's forms.

use reqwest::redirect::Policy;

use crate::support::app::{TOKEN, TestApp};

/// A client that shows redirects instead of following them.
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("client")
}

/// A signed-in console session made over HTTP: the client, its `Cookie` header value and the
/// session's CSRF token (read from a form page, as a browser would have it).
pub struct ConsoleSession {
    pub client: reqwest::Client,
    pub cookie: String,
    pub csrf: String,
}

impl ConsoleSession {
    pub async fn open(app: &TestApp) -> Self {
        let client = client();
        let signed_in = client
            .post(app.url("/console/sign-in"))
            .form(&[("token", TOKEN), ("next", "/")])
            .send()
            .await
            .expect("sign in");
        assert_eq!(signed_in.status(), 303);
        let cookie = signed_in.headers()["set-cookie"]
            .to_str()
            .expect("cookie")
            .split(';')
            .next()
            .expect("name=value")
            .to_owned();
        let page = client
            .get(app.url("/console/credentials/new"))
            .header("cookie", &cookie)
            .send()
            .await
            .expect("form page")
            .text()
            .await
            .expect("html");
        let csrf = page
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a csrf field")
            .to_owned();
        Self {
            client,
            cookie,
            csrf,
        }
    }

    /// A GET with the session's cookie.
    pub async fn get(&self, app: &TestApp, path: &str) -> reqwest::Response {
        self.client
            .get(app.url(path))
            .header("cookie", &self.cookie)
            .send()
            .await
            .expect("get")
    }

    /// Posts the new-credential form named `name`, with the session's cookie and CSRF token and
    /// the given extra headers (`Host`, `Origin`, forwarded headers).
    pub(crate) async fn create_credential(
        &self,
        app: &TestApp,
        name: &str,
        headers: &[(&str, &str)],
    ) -> reqwest::StatusCode {
        let mut request = self
            .client
            .post(app.url("/console/credentials"))
            .header("cookie", &self.cookie)
            .form(&[
                ("name", name),
                ("username", "u"),
                ("password", "pw-1234"),
                ("csrf", self.csrf.as_str()),
            ]);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("post").status()
    }
}
