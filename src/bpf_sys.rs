//! The few bpf(2) calls aya 0.14 does not offer: cgroup storage with the
//! shared u64 key (aya only supports the per-attach-type key), element
//! updates under the value's bpf_spin_lock, and a cgroup link's target.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

const BPF_EXIST: u64 = 2;
/// Copy the value while holding its bpf_spin_lock (the lock itself is skipped).
const BPF_F_LOCK: u64 = 4;

#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<()> {
    // SAFETY: attr is a live, correctly laid out bpf_attr prefix for cmd, and
    // the kernel reads at most size_of::<T>() bytes of it.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A bpf(2) command that returns a new file descriptor on success.
fn sys_bpf_fd<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: as in sys_bpf; a non-negative return is a new fd we own.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a fresh descriptor.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(ret as i32) })
}

/// Marker for plain-old-data map values: any bit pattern is valid.
///
/// # Safety
/// The type must be `repr(C)`, without padding that matters, and valid for all bit patterns.
pub unsafe trait Pod: Copy + Default {}

/// Reads a value under its spin lock. The map must hold u64 keys and values
/// of exactly V's size (a map of another plugin build may not).
pub fn lookup_locked<V: Pod>(map: BorrowedFd<'_>, key: u64) -> io::Result<V> {
    check_sizes::<V>(map)?;
    let mut value = V::default();
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: &key as *const u64 as u64,
        value: &mut value as *mut V as u64,
        flags: BPF_F_LOCK,
        ..Default::default()
    };
    sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut attr)?;
    Ok(value)
}

/// Overwrites an existing value under its spin lock.
pub fn update_locked<V: Pod>(map: BorrowedFd<'_>, key: u64, value: &V) -> io::Result<()> {
    check_sizes::<V>(map)?;
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: &key as *const u64 as u64,
        value: value as *const V as u64,
        flags: BPF_F_LOCK | BPF_EXIST,
        ..Default::default()
    };
    sys_bpf(BPF_MAP_UPDATE_ELEM, &mut attr)
}

fn check_sizes<V>(map: BorrowedFd<'_>) -> io::Result<()> {
    // struct bpf_map_info starts: type, id, key_size, value_size (u32 each).
    let mut info = [0u32; 20];
    let mut attr = InfoAttr {
        bpf_fd: map.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let (key_size, value_size) = (info[2] as usize, info[3] as usize);
    if key_size != 8 || value_size != std::mem::size_of::<V>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("map has {key_size}-byte keys and {value_size}-byte values, expected 8 and {}", std::mem::size_of::<V>()),
        ));
    }
    Ok(())
}

/// The part of struct bpf_link_info we read: header and the cgroup variant.
#[repr(C)]
#[derive(Default, Clone, Copy, Debug)]
pub struct CgroupLinkInfo {
    pub link_type: u32,
    pub id: u32,
    pub prog_id: u32,
    _pad: u32,
    pub cgroup_id: u64,
    pub attach_type: u32,
    _pad2: u32,
}

pub const BPF_LINK_TYPE_CGROUP: u32 = 3;

pub fn link_info(link: BorrowedFd<'_>) -> io::Result<CgroupLinkInfo> {
    let mut info = CgroupLinkInfo::default();
    let mut attr = InfoAttr {
        bpf_fd: link.as_raw_fd() as u32,
        info_len: std::mem::size_of::<CgroupLinkInfo>() as u32,
        info: &mut info as *mut CgroupLinkInfo as u64,
    };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info)
}

const BPF_OBJ_GET: libc::c_long = 7;

#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// Opens a pinned BPF object (program, map or link).
pub fn obj_get(path: &std::path::Path) -> io::Result<std::os::fd::OwnedFd> {
    let c = path_cstring(path)?;
    let mut attr = ObjGetAttr { pathname: c.as_ptr() as u64, ..Default::default() };
    sys_bpf_fd(BPF_OBJ_GET, &mut attr)
}

fn path_cstring(path: &std::path::Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))
}

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;
/// BPF_CGROUP_INET_EGRESS
pub const ATTACH_CGROUP_INET_EGRESS: u32 = 1;

#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct GetFdByIdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// Names of the programs attached directly to a cgroup for `attach_type`.
/// One query plus two calls per attached program: cheap on a pod cgroup,
/// unlike walking every attachment's pins.
pub fn attached_prog_names(cgroup: BorrowedFd<'_>, attach_type: u32) -> io::Result<Vec<String>> {
    let mut ids = [0u32; 64];
    let mut attr = QueryAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    sys_bpf(BPF_PROG_QUERY, &mut attr)?;
    let mut names = Vec::new();
    for id in &ids[..(attr.prog_cnt as usize).min(ids.len())] {
        let mut by_id = GetFdByIdAttr { id: *id, ..Default::default() };
        let Ok(fd) = sys_bpf_fd(BPF_PROG_GET_FD_BY_ID, &mut by_id) else {
            continue; // detached meanwhile
        };
        // struct bpf_prog_info: the name is 16 bytes at offset 64.
        let mut info = [0u8; 80];
        let mut info_attr = InfoAttr { bpf_fd: fd.as_raw_fd() as u32, info_len: info.len() as u32, info: info.as_mut_ptr() as u64 };
        sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut info_attr)?;
        let name = &info[64..80];
        let len = name.iter().position(|b| *b == 0).unwrap_or(16);
        names.push(String::from_utf8_lossy(&name[..len]).into_owned());
    }
    Ok(names)
}

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
/// BPF_CGROUP_INET_INGRESS
pub const ATTACH_CGROUP_INET_INGRESS: u32 = 0;
/// BPF_CGROUP_SOCK_OPS
pub const ATTACH_CGROUP_SOCK_OPS: u32 = 3;
/// BPF_CGROUP_SETSOCKOPT
pub const ATTACH_CGROUP_SETSOCKOPT: u32 = 22;

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

/// Attaches a program to a cgroup as a bpf_link. Dropping the returned fd
/// detaches it, unless it was pinned first.
///
/// ADD calls this directly rather than through aya, whose first use in a
/// process runs a dozen feature-probing program and BTF loads: a plugin
/// process attaches once and exits, so that was most of a warm ADD.
pub fn link_create(prog: BorrowedFd<'_>, cgroup: BorrowedFd<'_>, attach_type: u32) -> io::Result<std::os::fd::OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        flags: 0,
    };
    sys_bpf_fd(BPF_LINK_CREATE, &mut attr)
}

/// Pins a BPF object (link, map, program) at a bpffs path.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &std::path::Path) -> io::Result<()> {
    let c = path_cstring(path)?;
    let mut attr = ObjGetAttr { pathname: c.as_ptr() as u64, bpf_fd: fd.as_raw_fd() as u32, file_flags: 0 };
    sys_bpf(BPF_OBJ_PIN, &mut attr)
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_TYPE_ARRAY: u32 = 2;

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// Creates a one-entry array map holding `value`: a small record that can be
/// pinned beside BPF objects on bpffs, which holds no regular files.
pub fn record_create(name: &str, value: &[u8]) -> io::Result<std::os::fd::OwnedFd> {
    let mut map_name = [0u8; 16];
    for (d, s) in map_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    let mut attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: value.len() as u32,
        max_entries: 1,
        map_name,
        ..Default::default()
    };
    let map = sys_bpf_fd(BPF_MAP_CREATE, &mut attr)?;
    let key = 0u32;
    let mut update = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: &key as *const u32 as u64,
        value: value.as_ptr() as u64,
        ..Default::default()
    };
    sys_bpf(BPF_MAP_UPDATE_ELEM, &mut update)?;
    Ok(map)
}

/// Reads the value of a one-entry array map made by `record_create`.
pub fn record_read(map: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut info = [0u32; 20];
    let mut attr = InfoAttr { bpf_fd: map.as_raw_fd() as u32, info_len: std::mem::size_of_val(&info) as u32, info: info.as_mut_ptr() as u64 };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let mut value = vec![0u8; info[3] as usize];
    let key = 0u32;
    let mut lookup = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: &key as *const u32 as u64,
        value: value.as_mut_ptr() as u64,
        ..Default::default()
    };
    sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut lookup)?;
    Ok(value)
}
