// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title StagewiseStaking
/// @notice Stake of stage workers, slashing by validators, epoch anchors of the stagewise ledger and
/// reward claims against the latest anchored rewards root.
/// @dev Accountable validators (PROTOCOL I7): a slash or an anchor is an order that `threshold` distinct
/// validators signed as EIP-712 typed data (`Slash`, `Anchor`; the domain binds the chain id and this
/// contract). Anyone may submit a signed order; the signatures, packed 65 bytes each (r, s, v), must come
/// from validators in strictly ascending address order (so none repeats), each with a low s. t-1 keys,
/// stolen or dishonest, can neither take stake nor move the reward pool. Anchors advance exactly one epoch
/// at a time. The owner can take unclaimed pool funds back only `RECOVERY_DELAY` after announcing it.
/// @dev Merkle proofs follow OpenZeppelin's MerkleProof (keccak256 over sorted pairs). A reward leaf is
/// keccak256(bytes.concat(keccak256(abi.encode(account, cumulativeAmount)))), the double hash that keeps a
/// leaf from ever being read as an inner node. Every state-changing function that moves ether follows
/// checks-effects-interactions and runs under one reentrancy lock.
contract StagewiseStaking {
    // ------------------------------------------------------------------ errors

    error NotOwner(address caller);
    error NotValidator(address signer);
    error ZeroAddress();
    error ZeroAmount();
    error ValidatorAlreadyAdded(address validator);
    error ValidatorNotFound(address validator);
    error InsufficientStake(uint256 requested, uint256 available);
    error NothingToWithdraw();
    error UnbondingNotElapsed(uint256 releaseAt, uint256 nowTimestamp);
    error EvidenceAlreadyUsed(bytes32 evidenceHash);
    error EpochNotNext(uint256 epoch, uint256 expected);
    error NothingToSlash(address worker);
    error ThresholdNotSet();
    error InvalidThreshold(uint256 threshold, uint256 validatorCount);
    error TooFewSignatures(uint256 given, uint256 threshold);
    error InvalidSignature(uint256 index);
    error SignerOutOfOrder(address signer);
    error OrderExpired(uint256 deadline, uint256 nowTimestamp);
    error NoRecoveryAnnounced();
    error RecoveryNotDue(uint256 executableAt, uint256 nowTimestamp);
    error NoRewardsRoot();
    error InvalidProof();
    error NothingToClaim(uint256 cumulativeAmount, uint256 alreadyClaimed);
    error InsufficientRewardPool(uint256 payout, uint256 pool);
    error TransferFailed(address to, uint256 amount);
    error ReentrantCall();

    // ------------------------------------------------------------------ events

    event Staked(address indexed worker, uint256 amount, uint256 totalStake);
    event UnstakeRequested(address indexed worker, uint256 amount, uint256 totalUnbonding, uint256 releaseAt);
    event Withdrawn(address indexed worker, uint256 amount);
    event Slashed(
        address indexed worker, bytes32 indexed evidenceHash, address indexed validator, uint256 amount
    );
    event Anchored(
        uint256 indexed epoch, bytes32 entriesRoot, bytes32 rewardsRoot, uint256 entryCount, address validator
    );
    event Claimed(address indexed account, uint256 amount, uint256 cumulativeAmount);
    event RewardsFunded(address indexed funder, uint256 amount, uint256 pool);
    event ValidatorAdded(address indexed validator);
    event ValidatorRemoved(address indexed validator);
    event ThresholdChanged(uint256 threshold);
    event RecoveryAnnounced(address indexed to, uint256 amount, uint256 executableAt);
    event RecoveryCancelled(address indexed to, uint256 amount);
    event RecoveryExecuted(address indexed to, uint256 amount);
    event TreasuryChanged(address indexed treasury);
    event OwnershipTransferred(address indexed previousOwner, address indexed newOwner);

    // ------------------------------------------------------------------ state

    uint256 private constant UNLOCKED = 1;
    uint256 private constant LOCKED = 2;
    uint256 private lock = UNLOCKED;

    /// @notice How long an announced recovery of reward-pool funds waits before the owner may execute it:
    /// long enough for every worker to claim what the anchored roots owe it first.
    uint256 public constant RECOVERY_DELAY = 30 days;

    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 public constant SLASH_TYPEHASH =
        keccak256("Slash(address worker,uint256 amount,bytes32 evidenceHash,uint256 deadline)");
    bytes32 public constant ANCHOR_TYPEHASH = keccak256(
        "Anchor(uint256 epoch,bytes32 entriesRoot,bytes32 rewardsRoot,uint256 entryCount,uint256 deadline)"
    );
    /// @dev secp256k1n / 2: a signature with a larger s has a twin (n - s) and is refused (EIP-2).
    uint256 private constant HALF_ORDER = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;

    bytes32 private immutable cachedDomainSeparator;
    uint256 private immutable cachedChainId;

    address public owner;
    address public treasury;
    uint256 public immutable unbondingDelay;

    mapping(address => bool) public isValidator;
    uint256 public validatorCount;
    uint256 public threshold;

    address public recoveryTo;
    uint256 public recoveryAmount;
    uint256 public recoveryAt;

    mapping(address => uint256) public stakeOf;
    mapping(address => uint256) public unbondingOf;
    mapping(address => uint256) public releaseAtOf;

    mapping(bytes32 => bool) public evidenceUsed;

    uint256 public latestEpoch;
    bytes32 public latestRewardsRoot;
    mapping(uint256 => bytes32) public entriesRootOf;

    uint256 public rewardPool;
    mapping(address => uint256) public claimedOf;

    // ------------------------------------------------------------------ modifiers

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        _;
    }

    modifier nonReentrant() {
        if (lock == LOCKED) revert ReentrantCall();
        lock = LOCKED;
        _;
        lock = UNLOCKED;
    }

    constructor(address treasury_, uint256 unbondingDelay_) {
        if (treasury_ == address(0)) revert ZeroAddress();
        owner = msg.sender;
        treasury = treasury_;
        unbondingDelay = unbondingDelay_;
        cachedChainId = block.chainid;
        cachedDomainSeparator = _buildDomainSeparator();
        emit OwnershipTransferred(address(0), msg.sender);
        emit TreasuryChanged(treasury_);
    }

    // ------------------------------------------------------------------ owner

    function addValidator(address validator) external onlyOwner {
        if (validator == address(0)) revert ZeroAddress();
        if (isValidator[validator]) revert ValidatorAlreadyAdded(validator);
        isValidator[validator] = true;
        validatorCount += 1;
        emit ValidatorAdded(validator);
    }

    /// @notice Remove a validator; the threshold must stay reachable by the validators left.
    function removeValidator(address validator) external onlyOwner {
        if (!isValidator[validator]) revert ValidatorNotFound(validator);
        uint256 count = validatorCount - 1;
        if (threshold > count) revert InvalidThreshold(threshold, count);
        isValidator[validator] = false;
        validatorCount = count;
        emit ValidatorRemoved(validator);
    }

    /// @notice How many distinct validators must sign a slash or an anchor: 1 <= t <= validatorCount.
    function setThreshold(uint256 threshold_) external onlyOwner {
        if (threshold_ == 0 || threshold_ > validatorCount) revert InvalidThreshold(threshold_, validatorCount);
        threshold = threshold_;
        emit ThresholdChanged(threshold_);
    }

    /// @notice Announce taking `amount` of the reward pool back to `to`; executable after RECOVERY_DELAY.
    /// A new announcement replaces the pending one and restarts the delay.
    function announceRecovery(address to, uint256 amount) external onlyOwner {
        if (to == address(0)) revert ZeroAddress();
        if (amount == 0) revert ZeroAmount();
        uint256 executableAt = block.timestamp + RECOVERY_DELAY;
        recoveryTo = to;
        recoveryAmount = amount;
        recoveryAt = executableAt;
        emit RecoveryAnnounced(to, amount, executableAt);
    }

    function cancelRecovery() external onlyOwner {
        if (recoveryAt == 0) revert NoRecoveryAnnounced();
        emit RecoveryCancelled(recoveryTo, recoveryAmount);
        _clearRecovery();
    }

    function executeRecovery() external onlyOwner nonReentrant {
        uint256 executableAt = recoveryAt;
        if (executableAt == 0) revert NoRecoveryAnnounced();
        if (block.timestamp < executableAt) revert RecoveryNotDue(executableAt, block.timestamp);
        address to = recoveryTo;
        uint256 amount = recoveryAmount;
        uint256 pool = rewardPool;
        if (amount > pool) revert InsufficientRewardPool(amount, pool);
        rewardPool = pool - amount;
        _clearRecovery();
        emit RecoveryExecuted(to, amount);
        _send(to, amount);
    }

    function setTreasury(address treasury_) external onlyOwner {
        if (treasury_ == address(0)) revert ZeroAddress();
        treasury = treasury_;
        emit TreasuryChanged(treasury_);
    }

    function transferOwnership(address newOwner) external onlyOwner {
        if (newOwner == address(0)) revert ZeroAddress();
        emit OwnershipTransferred(owner, newOwner);
        owner = newOwner;
    }

    // ------------------------------------------------------------------ stake

    function stake() external payable nonReentrant {
        if (msg.value == 0) revert ZeroAmount();
        uint256 total = stakeOf[msg.sender] + msg.value;
        stakeOf[msg.sender] = total;
        emit Staked(msg.sender, msg.value, total);
    }

    /// @notice Move `amount` of active stake into unbonding. Every request restarts the delay for the whole
    /// unbonding balance, so stake can never leave sooner than `unbondingDelay` after its last request.
    function requestUnstake(uint256 amount) external nonReentrant {
        if (amount == 0) revert ZeroAmount();
        uint256 active = stakeOf[msg.sender];
        if (amount > active) revert InsufficientStake(amount, active);
        uint256 unbonding = unbondingOf[msg.sender] + amount;
        uint256 releaseAt = block.timestamp + unbondingDelay;
        stakeOf[msg.sender] = active - amount;
        unbondingOf[msg.sender] = unbonding;
        releaseAtOf[msg.sender] = releaseAt;
        emit UnstakeRequested(msg.sender, amount, unbonding, releaseAt);
    }

    function withdraw() external nonReentrant {
        uint256 amount = unbondingOf[msg.sender];
        if (amount == 0) revert NothingToWithdraw();
        uint256 releaseAt = releaseAtOf[msg.sender];
        if (block.timestamp < releaseAt) revert UnbondingNotElapsed(releaseAt, block.timestamp);
        unbondingOf[msg.sender] = 0;
        releaseAtOf[msg.sender] = 0;
        emit Withdrawn(msg.sender, amount);
        _send(msg.sender, amount);
    }

    // ------------------------------------------------------------------ validators

    /// @notice Take up to `amount` from `worker` (active stake first, then what is unbonding; never more
    /// than it has) and send it to the treasury, on an order `threshold` validators signed. One piece of
    /// evidence slashes once.
    function slash(address worker, uint256 amount, bytes32 evidenceHash, uint256 deadline, bytes calldata signatures)
        external
        nonReentrant
    {
        if (amount == 0) revert ZeroAmount();
        if (evidenceUsed[evidenceHash]) revert EvidenceAlreadyUsed(evidenceHash);
        _requireSigned(
            keccak256(abi.encode(SLASH_TYPEHASH, worker, amount, evidenceHash, deadline)), deadline, signatures
        );
        uint256 active = stakeOf[worker];
        uint256 unbonding = unbondingOf[worker];
        if (active + unbonding == 0) revert NothingToSlash(worker);
        evidenceUsed[evidenceHash] = true;
        if (amount <= active) {
            stakeOf[worker] = active - amount;
        } else {
            if (amount > active + unbonding) amount = active + unbonding;
            stakeOf[worker] = 0;
            unbondingOf[worker] = unbonding - (amount - active);
        }
        emit Slashed(worker, evidenceHash, msg.sender, amount);
        _send(treasury, amount);
    }

    /// @notice Record the roots of the next ledger epoch (exactly `latestEpoch + 1`) on an order `threshold`
    /// validators signed. Constant gas whatever `entryCount` is.
    function anchor(
        uint256 epoch,
        bytes32 entriesRoot,
        bytes32 rewardsRoot,
        uint256 entryCount,
        uint256 deadline,
        bytes calldata signatures
    ) external {
        uint256 expected = latestEpoch + 1;
        if (epoch != expected) revert EpochNotNext(epoch, expected);
        _requireSigned(
            keccak256(abi.encode(ANCHOR_TYPEHASH, epoch, entriesRoot, rewardsRoot, entryCount, deadline)),
            deadline,
            signatures
        );
        latestEpoch = epoch;
        latestRewardsRoot = rewardsRoot;
        entriesRootOf[epoch] = entriesRoot;
        emit Anchored(epoch, entriesRoot, rewardsRoot, entryCount, msg.sender);
    }

    // ------------------------------------------------------------------ rewards

    function fundRewards() external payable nonReentrant {
        if (msg.value == 0) revert ZeroAmount();
        uint256 pool = rewardPool + msg.value;
        rewardPool = pool;
        emit RewardsFunded(msg.sender, msg.value, pool);
    }

    /// @notice Pay the caller what its cumulative reward in the latest rewards root exceeds what it has
    /// already claimed.
    function claim(uint256 cumulativeAmount, bytes32[] calldata proof) external nonReentrant {
        bytes32 root = latestRewardsRoot;
        if (root == bytes32(0)) revert NoRewardsRoot();
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(msg.sender, cumulativeAmount))));
        if (!_verify(proof, root, leaf)) revert InvalidProof();
        uint256 already = claimedOf[msg.sender];
        if (cumulativeAmount <= already) revert NothingToClaim(cumulativeAmount, already);
        uint256 payout = cumulativeAmount - already;
        uint256 pool = rewardPool;
        if (payout > pool) revert InsufficientRewardPool(payout, pool);
        claimedOf[msg.sender] = cumulativeAmount;
        rewardPool = pool - payout;
        emit Claimed(msg.sender, payout, cumulativeAmount);
        _send(msg.sender, payout);
    }

    // ------------------------------------------------------------------ views

    /// @notice What a slash of `worker` could take at most: active stake plus what is unbonding.
    function slashableOf(address worker) external view returns (uint256) {
        return stakeOf[worker] + unbondingOf[worker];
    }

    /// @notice How many epochs are anchored: epochs run 1, 2, 3, ... with none skipped.
    function anchorCount() external view returns (uint256) {
        return latestEpoch;
    }

    /// @notice The EIP-712 domain separator of this contract on this chain.
    function domainSeparator() public view returns (bytes32) {
        return block.chainid == cachedChainId ? cachedDomainSeparator : _buildDomainSeparator();
    }

    // ------------------------------------------------------------------ internal

    /// @dev Revert unless `signatures` holds at least `threshold` valid signatures of the typed order
    /// `structHash`, by validators in strictly ascending address order, before `deadline`.
    function _requireSigned(bytes32 structHash, uint256 deadline, bytes calldata signatures) private view {
        if (block.timestamp > deadline) revert OrderExpired(deadline, block.timestamp);
        uint256 t = threshold;
        if (t == 0) revert ThresholdNotSet();
        uint256 count = signatures.length / 65;
        if (signatures.length != count * 65) revert InvalidSignature(count);
        if (count < t) revert TooFewSignatures(count, t);
        bytes32 digest = keccak256(abi.encodePacked("\x19\x01", domainSeparator(), structHash));
        address previous = address(0);
        for (uint256 i = 0; i < count; i++) {
            bytes32 r;
            bytes32 s;
            uint8 v;
            assembly ("memory-safe") {
                let at := add(signatures.offset, mul(i, 65))
                r := calldataload(at)
                s := calldataload(add(at, 32))
                v := byte(0, calldataload(add(at, 64)))
            }
            if (uint256(s) > HALF_ORDER || (v != 27 && v != 28)) revert InvalidSignature(i);
            address signer = ecrecover(digest, v, r, s);
            if (signer == address(0)) revert InvalidSignature(i);
            if (!isValidator[signer]) revert NotValidator(signer);
            if (signer <= previous) revert SignerOutOfOrder(signer);
            previous = signer;
        }
    }

    function _buildDomainSeparator() private view returns (bytes32) {
        return keccak256(
            abi.encode(
                DOMAIN_TYPEHASH, keccak256("StagewiseStaking"), keccak256("1"), block.chainid, address(this)
            )
        );
    }

    function _clearRecovery() private {
        recoveryTo = address(0);
        recoveryAmount = 0;
        recoveryAt = 0;
    }

    function _send(address to, uint256 amount) private {
        (bool ok,) = to.call{value: amount}("");
        if (!ok) revert TransferFailed(to, amount);
    }

    /// @dev OpenZeppelin MerkleProof.verify: fold the proof over the leaf with sorted-pair keccak256.
    function _verify(bytes32[] calldata proof, bytes32 root, bytes32 leaf) private pure returns (bool) {
        bytes32 computed = leaf;
        for (uint256 i = 0; i < proof.length; i++) {
            bytes32 sibling = proof[i];
            computed = computed < sibling ? _hashPair(computed, sibling) : _hashPair(sibling, computed);
        }
        return computed == root;
    }

    function _hashPair(bytes32 a, bytes32 b) private pure returns (bytes32 value) {
        assembly ("memory-safe") {
            mstore(0x00, a)
            mstore(0x20, b)
            value := keccak256(0x00, 0x40)
        }
    }
}
