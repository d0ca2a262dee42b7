// `sqlx::migrate!` embeds the migrations when the crate compiles: a changed migration alone
// must compile it again.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
