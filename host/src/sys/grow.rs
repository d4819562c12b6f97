//! Online filesystem growth by ioctl on a descriptor of the mounted
//! filesystem's root: the kernel grows exactly the filesystem that
//! descriptor is on, where a tool would look its mount point up by name.

use std::os::fd::{AsRawFd, BorrowedFd};

use rustix::io::Errno;

/// `struct xfs_fsop_geom_v1` (xfs_fs.h): what growth needs is the block
/// size and the current data block count.
#[repr(C)]
struct XfsGeometryV1 {
    blocksize: u32,
    rtextsize: u32,
    agblocks: u32,
    agcount: u32,
    logblocks: u32,
    sectsize: u32,
    inodesize: u32,
    imaxpct: u32,
    datablocks: u64,
    rtblocks: u64,
    rtextents: u64,
    logstart: u64,
    uuid: [u8; 16],
    sunit: u32,
    swidth: u32,
    version: i32,
    flags: u32,
    logsectsize: u32,
    rtsectsize: u32,
    dirblocksize: u32,
}

/// `struct xfs_growfs_data`.
#[repr(C)]
struct XfsGrowData {
    newblocks: u64,
    imaxpct: u32,
}

const fn ioc(dir: u64, ty: u8, nr: u64, size: usize) -> libc::c_ulong {
    ((dir << 30) | ((size as u64) << 16) | ((ty as u64) << 8) | nr) as libc::c_ulong
}
const XFS_IOC_FSGEOMETRY_V1: libc::c_ulong =
    ioc(2, b'X', 100, std::mem::size_of::<XfsGeometryV1>());
const XFS_IOC_FSGROWFSDATA: libc::c_ulong = ioc(1, b'X', 110, std::mem::size_of::<XfsGrowData>());
const EXT4_IOC_RESIZE_FS: libc::c_ulong = ioc(1, b'f', 16, 8);

fn ioctl<T>(fd: BorrowedFd, request: libc::c_ulong, arg: *mut T) -> Result<(), Errno> {
    // SAFETY: each request takes a pointer to the struct it is defined with.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, arg) };
    if rc < 0 {
        Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO))
    } else {
        Ok(())
    }
}

/// Grows the XFS at `root` to `device_bytes`.
pub fn xfs(root: BorrowedFd, device_bytes: u64) -> Result<(), Errno> {
    // SAFETY: integers and a byte array; all-zero is valid.
    let mut geometry: XfsGeometryV1 = unsafe { std::mem::zeroed() };
    ioctl(root, XFS_IOC_FSGEOMETRY_V1, &mut geometry)?;
    let newblocks = device_bytes / u64::from(geometry.blocksize.max(512));
    if newblocks <= geometry.datablocks {
        return Ok(());
    }
    let mut grow = XfsGrowData {
        newblocks,
        imaxpct: geometry.imaxpct,
    };
    ioctl(root, XFS_IOC_FSGROWFSDATA, &mut grow)
}

/// Grows the ext4 at `root` to `device_bytes`.
pub fn ext4(root: BorrowedFd, device_bytes: u64) -> Result<(), Errno> {
    let st = rustix::fs::fstatvfs(root)?;
    let mut blocks = device_bytes / st.f_bsize.max(1024);
    ioctl(root, EXT4_IOC_RESIZE_FS, &mut blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_match_the_kernel_headers() {
        assert_eq!(std::mem::size_of::<XfsGeometryV1>(), 112);
        assert_eq!(XFS_IOC_FSGEOMETRY_V1, 0x8070_5864);
        assert_eq!(XFS_IOC_FSGROWFSDATA, 0x4010_586e);
        assert_eq!(EXT4_IOC_RESIZE_FS, 0x4008_6610);
    }
}
