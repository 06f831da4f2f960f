//! Recording fakes of the kernel traits (`traits`), for unit tests of the
//! code that decides: a fake starts from a snapshot, records every call in
//! order, and changes its state as the kernel would. Built only with the
//! `testing` feature, which only dev-dependencies turn on.

use crate::error::KernelError;
use crate::overlay::TaggedRoute;
use crate::traits::RouteTable;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// One call made to a fake, as a test asserts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    ReplaceRoute(TaggedRoute),
    DelRoute(TaggedRoute),
    ReplaceNeigh(u32, IpAddr, [u8; 6]),
    DelNeigh(u32, IpAddr),
    ReplaceFdb(u32, [u8; 6], IpAddr),
    DelFdb(u32, [u8; 6], IpAddr),
}

/// Which call a fake refuses (once).
pub type FailOn = fn(&Call) -> bool;

/// A routing table in memory. `fail_on` makes the first call that matches
/// it fail, as the kernel refusing would.
#[derive(Debug, Default)]
pub struct FakeRoutes {
    pub routes: RefCell<BTreeSet<TaggedRoute>>,
    pub neighs: RefCell<BTreeSet<(u32, IpAddr, [u8; 6])>>,
    pub fdb: RefCell<BTreeSet<(u32, [u8; 6], IpAddr)>>,
    pub calls: RefCell<Vec<Call>>,
    pub fail_on: RefCell<Option<FailOn>>,
}

impl FakeRoutes {
    fn record(&self, c: Call) -> Result<(), KernelError> {
        let fail = self.fail_on.borrow().is_some_and(|f| f(&c));
        self.calls.borrow_mut().push(c);
        if fail {
            *self.fail_on.borrow_mut() = None;
            return Err(KernelError::Other("refused by the fake".into()));
        }
        Ok(())
    }

    /// The calls so far, emptied.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.calls.borrow_mut())
    }
}

impl RouteTable for FakeRoutes {
    fn tagged_routes(&self) -> Result<Vec<TaggedRoute>, KernelError> {
        Ok(self.routes.borrow().iter().cloned().collect())
    }
    fn replace_tagged_route(&self, r: &TaggedRoute) -> Result<(), KernelError> {
        self.record(Call::ReplaceRoute(r.clone()))?;
        self.routes.borrow_mut().insert(r.clone());
        Ok(())
    }
    fn del_tagged_route(&self, r: &TaggedRoute) -> Result<(), KernelError> {
        self.record(Call::DelRoute(r.clone()))?;
        self.routes.borrow_mut().remove(r);
        Ok(())
    }
    fn permanent_neighs(&self, dev: u32) -> Result<Vec<(IpAddr, [u8; 6])>, KernelError> {
        Ok(self
            .neighs
            .borrow()
            .iter()
            .filter(|n| n.0 == dev)
            .map(|n| (n.1, n.2))
            .collect())
    }
    fn replace_neigh(&self, dev: u32, ip: IpAddr, mac: [u8; 6]) -> Result<(), KernelError> {
        self.record(Call::ReplaceNeigh(dev, ip, mac))?;
        let mut n = self.neighs.borrow_mut();
        n.retain(|e| !(e.0 == dev && e.1 == ip));
        n.insert((dev, ip, mac));
        Ok(())
    }
    fn del_neigh(&self, dev: u32, ip: IpAddr) -> Result<(), KernelError> {
        self.record(Call::DelNeigh(dev, ip))?;
        self.neighs
            .borrow_mut()
            .retain(|e| !(e.0 == dev && e.1 == ip));
        Ok(())
    }
    fn vxlan_fdb(&self, dev: u32) -> Result<Vec<([u8; 6], IpAddr)>, KernelError> {
        Ok(self
            .fdb
            .borrow()
            .iter()
            .filter(|f| f.0 == dev)
            .map(|f| (f.1, f.2))
            .collect())
    }
    fn replace_fdb(&self, dev: u32, mac: [u8; 6], dst: IpAddr) -> Result<(), KernelError> {
        self.record(Call::ReplaceFdb(dev, mac, dst))?;
        self.fdb.borrow_mut().insert((dev, mac, dst));
        Ok(())
    }
    fn del_fdb(&self, dev: u32, mac: [u8; 6], dst: IpAddr) -> Result<(), KernelError> {
        self.record(Call::DelFdb(dev, mac, dst))?;
        self.fdb.borrow_mut().remove(&(dev, mac, dst));
        Ok(())
    }
}
