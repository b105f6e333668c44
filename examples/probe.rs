use docker_volume_sshfs::options::*;
use docker_volume_sshfs::sftp::{FileAttributes, OpenFlags};
#[tokio::main]
async fn main() {
    let raw = split_cli_options(&std::env::args().nth(2).unwrap());
    let o = parse(
        &raw,
        Some(&std::env::args().nth(1).unwrap()),
        Context::Command,
    )
    .unwrap()
    .options;
    let s = docker_volume_sshfs::sftp::Sftp::connect(&o).await.unwrap();
    let p = format!("{}/re.txt", s.root());
    let f = s
        .open(
            &p,
            OpenFlags::CREATE | OpenFlags::WRITE | OpenFlags::TRUNCATE,
            FileAttributes::empty(),
        )
        .await
        .unwrap();
    f.write(0, b"before\n").await.unwrap();
    std::process::Command::new("pkill")
        .args(["-f", "sshd: root@notty"])
        .status()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let t = std::time::Instant::now();
    let r = f.write(7, b"after\n").await;
    println!("write after kill: {:?} in {:?}", r, t.elapsed());
    f.close().await.unwrap();
    println!("stats={:?}", s.stats());
}
