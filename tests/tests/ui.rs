//! `/ui/`: the node serves the explorer's files from `--ui-dir` (gzip when the browser
//! takes it and a `.gz` is there), says how to build it when there is none, and keeps the
//! page open on a node with a token while the API stays closed.

use restm_tests::{Node, problem, temp_dir};

fn ui_dir() -> std::path::PathBuf {
    let dir = temp_dir("ui");
    std::fs::create_dir_all(dir.join("pkg")).unwrap();
    std::fs::write(dir.join("index.html"), "<!doctype html><title>reSTM explorer</title>").unwrap();
    std::fs::write(dir.join("pkg/app.js"), "export default 1;").unwrap();
    std::fs::write(dir.join("pkg/app.js.gz"), [0x1f, 0x8b, 0x08, 0x00]).unwrap();
    dir
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

#[tokio::test]
async fn serves_the_explorer_from_its_directory() {
    let dir = ui_dir();
    let node = Node::start_with(&["--ui-dir", dir.to_str().unwrap(), "--auth-token", "s3cret"]);
    let http = client();
    let r = http.get(node.url("/ui")).send().await.unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], "/ui/");
    // The page is open without the token: it asks for it.
    let r = http.get(node.url("/ui/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(r.text().await.unwrap().contains("reSTM explorer"));
    let r = http.get(node.url("/ui/pkg/app.js")).header("accept-encoding", "gzip").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let r = http.get(node.url("/ui/pkg/app.js")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "export default 1;");
    problem(http.get(node.url("/ui/pkg/missing.wasm")).send().await.unwrap(), 404, "not-found").await;
    // The API is still closed.
    problem(http.get(node.url("/ptr")).send().await.unwrap(), 401, "unauthorized").await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn without_a_built_explorer_ui_says_how_to_build_it() {
    let node = Node::start();
    let p = problem(client().get(node.url("/ui/")).send().await.unwrap(), 404, "not-found").await;
    assert!(p.detail.contains("cargo xtask serve"), "{}", p.detail);
    problem(client().get(node.url("/ui/pkg/x.js")).send().await.unwrap(), 404, "not-found").await;
}
