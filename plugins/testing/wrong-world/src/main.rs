fn main() {
    println!("not a device plugin");
}
